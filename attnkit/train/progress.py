"""A one-line progress display: step, loss, tokens/s and time left."""

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Redraws one line on a terminal; on a pipe or file prints a line every ``every`` steps."""

    def __init__(self, total: int, start: int = 0, every: int = 100, stream=None) -> None:
        self.total, self.start, self.every = total, start, every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last_len = 0

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        width = 24
        filled = int(width * step / self.total)
        bar = "#" * filled + "." * (width - filled)
        line = (f"step {step:>{len(str(self.total))}}/{self.total} [{bar}] loss {loss:.4f} | "
                f"{tokens_per_s / 1000:.1f}k tok/s | ETA {_clock(eta)}")
        if self.tty:
            self.stream.write("\r" + line.ljust(self.last_len))
            self.last_len = len(line)
            self.stream.flush()
        elif step % self.every == 0 or step == self.total:
            self.stream.write(line + "\n")
            self.stream.flush()

    def print(self, message: str) -> None:
        """A line that stays, printed above the bar."""
        if self.tty and self.last_len:
            self.stream.write("\r" + " " * self.last_len + "\r")
            self.last_len = 0
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.last_len:
            self.stream.write("\n")
            self.stream.flush()
