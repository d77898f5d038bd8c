"""The catalogue check: every message docs/errors.md lists is produced by some test.

It runs last (pytest runs files in name order) and only when the whole default suite ran,
since each documented line is matched by whichever test triggers it, in any file. A line no
test produces is dead documentation or an untested path: write the test, or remove the line.
The few that this machine cannot trigger are listed, with the reason, in
``test_errors.UNTRIGGERABLE``. An example line (a real path or number) counts as covered when
the template it instances is. After other failures it skips, unless
``ATTNKIT_CATALOGUE_ALWAYS=1`` asks for the list anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import test_errors

HERE = Path(__file__).resolve().parent


def test_every_documented_message_is_produced_by_a_test(request):
    whole = all(Path(a.split("::")[0]).resolve() in (HERE, HERE.parent) for a in request.config.args)
    if not whole or request.config.getoption("keyword"):
        pytest.skip("only meaningful after the whole suite: each message is matched where it is raised")
    if request.session.testsfailed and not os.environ.get("ATTNKIT_CATALOGUE_ALWAYS"):
        pytest.skip("other tests failed; their messages may not have been reached")
    exempt = set()
    for line in test_errors.UNTRIGGERABLE:
        exempt |= {p.pattern for p in test_errors.DOCUMENTED if p.match(line)}
    lines = [line for line in test_errors.DOCS.read_text(encoding="utf-8").splitlines()
             if line.startswith("error: ")]
    matched = [p for p in test_errors.DOCUMENTED if p.pattern in test_errors.MATCHED]
    # an example line (a real path and number) is covered by the tested template it instances
    missing = [line for line, p in zip(lines, test_errors.DOCUMENTED, strict=True)
               if p.pattern not in test_errors.MATCHED and p.pattern not in exempt
               and not any(m.match(line) for m in matched)]
    assert not missing, "documented in docs/errors.md but produced by no test:\n" + "\n".join(missing)
