"""``attnkit inspect``: pictures and numbers from inside a trained run.

With ``--prompt``: the attention of every layer and head on the prompt (one heatmap PNG per
layer and head), the mean attention entropy per layer and head, and the next-token
distribution at several temperatures (for a masked-LM encoder: the distribution at each
``[MASK]`` written in the prompt). With ``--embeddings``: a PCA of the token embedding
table. For an image model (``abilities.images``), ``--image FILE`` or ``--index N`` (of the
run's held-out split) instead: the class probabilities and the attention rollout (Abnar &
Zuidema 2020) over the image. Every number drawn is also written to JSON beside the pictures.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from attnkit.commands import add_backend_argument
from attnkit.errors import AttnkitError
from attnkit.tokenizers.specials import HF_SPELLINGS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect", help="attention maps, attention entropy, next-token and embedding pictures; "
                        "for an image model, class probabilities and attention rollout",
        description="Write PNGs and a JSON file of what a trained run does on --prompt "
                    "(attention per layer and head, attention entropy, the next-token "
                    "distribution at several temperatures), or with --embeddings a PCA of its "
                    "token embeddings. For an image model: on --image FILE or on --index N of "
                    "its held-out images, the class probabilities and the attention rollout.",
        epilog="examples:\n"
               "  attnkit inspect runs/pydoc-char --prompt \"def __init__(self\"\n"
               "  attnkit inspect runs/pydoc-char --prompt \"The \" --layer 0 --head 1\n"
               "  attnkit inspect runs/encoder-mlm --prompt \"def __init__([MASK]elf)\"\n"
               "  attnkit inspect runs/pydoc-char --embeddings --out pictures/\n"
               "  attnkit inspect runs/vit-digits --index 0\n"
               "  attnkit inspect runs/vit-digits --image my-digit.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory, e.g. runs/pydoc-char")
    p.add_argument("--prompt", help="text to run through the model (for a masked-LM encoder, "
                   "with [MASK] where a token is to be predicted)")
    p.add_argument("--embeddings", action="store_true",
                   help="plot the token embedding table on its first two principal axes")
    p.add_argument("--image", type=Path, help="an image model: the image file to classify and "
                   "explain (any format Pillow reads; resized to the model's image size)")
    p.add_argument("--index", type=int, help="an image model: the N-th image (from 0) of the "
                   "run's held-out split, drawn with its true class")
    p.add_argument("--out", type=Path, help="output folder (default: RUN/inspect)")
    p.add_argument("--layer", type=int, help="draw attention heatmaps of this layer only "
                   "(inspect.json always holds every layer)")
    p.add_argument("--head", type=int, help="draw attention heatmaps of this head only")
    # None, not the defaults, so that a vision run can tell these were given and refuse them
    p.add_argument("--temperatures", help="comma-separated softmax temperatures (default 0.5,1,2)")
    p.add_argument("--top", type=int, help="tokens listed per temperature, or per [MASK] (10)")
    p.add_argument("--device", default="cpu", help="cpu | auto | cuda | mps (default cpu)")
    add_backend_argument(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def parse_temperatures(text: str) -> list[float]:
    try:
        temps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise AttnkitError(f"--temperatures must be comma-separated numbers, e.g. 0.5,1,2 "
                           f"(got '{text}')") from None
    if not temps or any(not t > 0 or t == float("inf") for t in temps):
        raise AttnkitError(f"--temperatures must be positive numbers, e.g. 0.5,1,2 (got '{text}')")
    return temps


TEXT_OPTIONS = ("--prompt", "--embeddings", "--layer", "--head", "--temperatures", "--top")
IMAGE_OPTIONS = ("--image", "--index")


def _given(args: argparse.Namespace, options: tuple[str, ...]) -> list[str]:
    """Which of ``options`` the command line set (every one defaults to None or False)."""
    return [o for o in options if (value := getattr(args, o[2:])) is not None and value is not False]


def _check_args(args: argparse.Namespace) -> list[float]:
    """A text run's options; the temperatures to draw."""
    images = _given(args, IMAGE_OPTIONS)
    if images:
        raise AttnkitError(f"{images[0]} is for image models, and {args.run} reads text (give "
                           f"--prompt \"TEXT\" or --embeddings)")
    if args.prompt is None and not args.embeddings:
        raise AttnkitError("nothing to inspect: give --prompt \"TEXT\" or --embeddings")
    if args.prompt is not None and args.prompt == "":
        raise AttnkitError("--prompt is empty (give at least one character)")
    if args.top is None:
        args.top = 10
    if args.top < 1:
        raise AttnkitError("--top must be at least 1")
    return parse_temperatures("0.5,1,2" if args.temperatures is None else args.temperatures)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise AttnkitError(f"unrecognized arguments: {' '.join(extra)} (see `attnkit inspect "
                           f"--help`)")
    import attnkit
    from attnkit.backends import accelerate

    loaded = attnkit.load(args.run, device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    if model.abilities.images:
        return run_image(loaded, args)
    temperatures = _check_args(args)
    if model.abilities.translates and args.embeddings:
        raise AttnkitError(f"{args.run} is a {model.cfg.family} model: --embeddings plots a "
                           f"decoder's or encoder's token table (use --prompt for its attention "
                           f"pictures)")
    if tok is None:
        raise AttnkitError(f"{args.run} has no tokenizer.json, so the prompt cannot be encoded "
                           f"(add the model's tokenizer.json to the folder)")
    # the attention maps are computed on the models' eager path, whatever the back-end
    accelerate(model, purpose="decode", backend=args.backend)
    mask_id = None  # refused before anything is written, like the other bad prompts below
    if _is_encoder(model) and args.prompt is not None:
        mask_id = _mask_id(model, tok, args.run, args.prompt)
    out = _out_dir(args)
    written: list[Path] = []
    summary: list[str] = []
    if args.prompt is not None and model.abilities.translates:
        written += inspect_seq2seq(model, tok, args, out, summary)
    elif args.prompt is not None:
        written += inspect_prompt(model, tok, args, temperatures, out, summary, mask_id)
    if args.embeddings:
        written += inspect_embeddings(model, tok, out, summary)
    _report(out, written, summary)
    return 0


def _out_dir(args: argparse.Namespace) -> Path:
    out = args.out or Path(args.run) / "inspect"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AttnkitError(f"cannot create {out}: {e.strerror or e} (choose another --out)") from None
    return out


def _report(out: Path, written: list[Path], summary: list[str]) -> None:
    print(f"wrote {len(written)} files to {out}:")
    for path in written:
        print(f"  {path}")
    for line in summary:
        print(line)


def _is_encoder(model) -> bool:
    """Whether ``model`` reads its whole input at once and neither continues nor translates
    it (an encoder: ``[CLS] ... [SEP]`` inputs, [MASK] predictions or class logits)."""
    return not (model.abilities.generates or model.abilities.translates)


def _encode(model, tok, prompt: str, mask_id: int | None = None, framed: bool = False
            ) -> list[int]:
    """The prompt's ids; ``framed`` (an encoder's) ``[CLS] ... [SEP]``, with ``mask_id`` at
    each mask marker (plain text never encodes to a special token, so the markers are cut out
    and the text between them encoded piece by piece)."""
    if mask_id is None:
        ids = tok.encode(prompt)  # unseen characters raise AttnkitError
    else:
        pieces = _marker_pattern(tok).split(prompt)
        ids = tok.encode(pieces[0]) if pieces[0] else []
        for piece in pieces[1:]:
            ids += [mask_id] + (tok.encode(piece) if piece else [])
    if framed:  # like the encoder's training inputs: [CLS] ... [SEP]
        specials = getattr(tok, "special_tokens", {}) or {}
        ids = ([specials["cls"]] if "cls" in specials else []) + ids + \
              ([specials["sep"]] if "sep" in specials else [])
    if not ids:
        raise AttnkitError("the prompt encodes to no tokens (give some text)")
    limit = model.cfg.context_length
    if len(ids) > limit:
        raise AttnkitError(f"the prompt is {len(ids)} tokens but the model's context is {limit} "
                           f"(shorten the prompt)")
    return ids


def _marker_pattern(tokenizer) -> re.Pattern:
    """What a prompt may write for a masked token: ``[MASK]``, ``<mask>``, ``<|mask|>`` (how
    tokenizers attnkit trains spell it) or the tokenizer's own spelling, longest first."""
    spellings = set(HF_SPELLINGS["mask"])
    mask_id = (getattr(tokenizer, "special_tokens", {}) or {}).get("mask")
    if mask_id is not None:
        try:
            own = tokenizer.decode([mask_id], skip_special=False).strip()
        except (AttnkitError, TypeError, ValueError, KeyError):
            own = ""
        if own:
            spellings.add(own)
    return re.compile("|".join(re.escape(m) for m in sorted(spellings, key=len, reverse=True)))


def _mask_id(model, tok, run: Path, prompt: str) -> int | None:
    """The id each mask marker of an encoder's prompt becomes, or None for a prompt without
    markers on an encoder that cannot fill them (a classifier: attention pictures only)."""
    mask_id = (getattr(tok, "special_tokens", {}) or {}).get("mask")
    has_head = model.abilities.masked_lm
    marked = _marker_pattern(tok).search(prompt) is not None
    if marked and not has_head:
        raise AttnkitError(f"{run} is an encoder without a masked-LM head (a classifier), so it "
                           f"cannot fill in [MASK] (drop [MASK] from the prompt to see its "
                           f"attention, or inspect a run trained with --data.task=mlm)")
    if marked and mask_id is None:
        raise AttnkitError(f"the tokenizer of {run} has no mask token, so [MASK] cannot be "
                           f"encoded (drop [MASK] from the prompt to see its attention, or "
                           f"inspect a run trained with --data.task=mlm)")
    if not marked and has_head and mask_id is not None:
        raise AttnkitError(f"the prompt has no [MASK] for the encoder {run} to fill in (write "
                           f"[MASK] where a token is to be predicted, e.g. --prompt "
                           f"\"def f([MASK]):\")")
    return mask_id if marked else None


def _mask_context(prompt: str, pattern: re.Pattern, k: int, width: int = 24) -> str:
    """The prompt around its ``k``-th marker (from 0), that marker written ``[?]``, the other
    markers ``[MASK]``; each side cut to ``width`` characters, never inside a ``[MASK]``."""
    m = list(pattern.finditer(prompt))[k]
    left = pattern.sub("[MASK]", prompt[:m.start()])
    right = pattern.sub("[MASK]", prompt[m.end():])
    if len(left) > width:
        left = left[-width + 3:]
        cut = left.find("]")
        left = "..." + (left[cut + 1:] if cut != -1 and "[" not in left[:cut] else left)
    if len(right) > width:
        right = right[:width - 3]
        cut = right.rfind("[")
        right = (right[:cut] if cut != -1 and "]" not in right[cut:] else right) + "..."
    return repr(left + "[?]" + right)


def inspect_masks(model, tok, args, ids: list[int], x, mask_id: int,
                  temperatures: list[float], out: Path, summary: list[str]
                  ) -> tuple[list[dict], Path]:
    """The masked-LM distribution at each masked position: the JSON entries, one summary line
    per mask (the top ``--top`` tokens at the temperature closest to 1) and one bar chart."""
    from attnkit.viz import inspect as nums
    from attnkit.viz import plots

    positions = [i for i, t in enumerate(ids) if t == mask_id]
    logits = nums.masked_logits(model, x, positions)  # (M, V)
    pattern = _marker_pattern(tok)
    entries, panels = [], []
    for k, (pos, row) in enumerate(zip(positions, logits)):
        dists = nums.next_token(row, temperatures, args.top, tok)
        entries.append({"position": pos, "distributions": dists})
        where = f"[MASK] {k + 1} of {len(positions)} (token {pos})"
        panels.append({"title": f"{where}: {_mask_context(args.prompt, pattern, k)}",
                       "distributions": dists})
        ref = min(dists, key=lambda d: abs(d["temperature"] - 1.0))
        shown = ", ".join(f"'{e['token']}' {e['prob']:.3f}" for e in ref["top"])
        summary.append(f"{where} at T={ref['temperature']:g}: {shown}")
    return entries, plots.masked_token_bars(panels, out / "masked_tokens.png")


def inspect_prompt(model, tok, args, temperatures: list[float], out: Path,
                   summary: list[str], mask_id: int | None = None) -> list[Path]:
    """Attention (``abilities.attention_maps``), entropy and the next-token picture of a
    model that generates; for an encoder, the masked-token view at each marker that
    ``mask_id`` (from :func:`_mask_id`) replaces."""
    import torch

    from attnkit.viz import inspect as nums
    from attnkit.viz import plots

    family = model.cfg.family  # written into inspect.json and the summary, never branched on
    encoder = _is_encoder(model)
    ids = _encode(model, tok, args.prompt, mask_id, framed=encoder)
    tokens = [nums.token_label(tok, i) for i in ids]
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    data: dict = {"run": str(args.run), "family": family, "prompt": args.prompt, "ids": ids,
                  "tokens": tokens}
    written: list[Path] = []
    if model.abilities.attention_maps:
        weights = nums.attention_weights(model, x)  # (L, nh, T, T)
        n_layers, n_heads = weights.shape[:2]
        _check_layer_head(args, n_layers, n_heads)
        entropy = nums.attention_entropy(weights)
        data["attention"] = {"shape": list(weights.shape),
                             "weights": weights.round(decimals=6).tolist()}
        data["attention_entropy"] = {"max": nums.max_entropy(len(ids)),
                                     "per_layer_head": entropy.tolist()}
        for layer in range(n_layers):
            if args.layer is not None and layer != args.layer:
                continue
            for head in range(n_heads):
                if args.head is not None and head != args.head:
                    continue
                path = out / f"attention_layer{layer}_head{head}.png"
                written.append(plots.attention_heatmap(
                    weights[layer, head].numpy(), tokens, path, f"layer {layer}, head {head}"))
        written.append(plots.entropy_grid(entropy.numpy(), out / "attention_entropy.png",
                                          nums.max_entropy(len(ids))))
        by_layer = ", ".join(f"L{i} {v:.2f}" for i, v in enumerate(entropy.mean(1).tolist()))
        summary.append(f"attention: {n_layers} layers x {n_heads} heads over {len(ids)} tokens; "
                       f"mean entropy (nats, max {nums.max_entropy(len(ids)):.2f}): {by_layer}")
    else:
        summary.append(f"no attention: {family} models have none, so only the next-token "
                       f"picture is drawn")
    if encoder and mask_id is not None:
        data["masked"], png = inspect_masks(model, tok, args, ids, x, mask_id, temperatures,
                                            out, summary)
        written.append(png)
    elif encoder:  # one that cannot fill a [MASK] (_mask_id refused any)
        why = ("has no masked-LM head" if not model.abilities.masked_lm
               else "has a tokenizer without a mask token")
        summary.append(f"no [MASK] predictions: this encoder {why} (a classifier), and an "
                       f"encoder does not continue text")
    else:
        logits = nums.last_logits(model, x)
        dists = nums.next_token(logits, temperatures, args.top, tok)
        data["next_token"] = dists
        label = repr(args.prompt if len(args.prompt) <= 24 else "..." + args.prompt[-21:])
        written.append(plots.next_token_bars(dists, out / "next_token.png", label))
        ref = min(dists, key=lambda d: abs(d["temperature"] - 1.0))
        shown = ", ".join(f"'{e['token']}' {e['prob']:.3f}" for e in ref["top"][:5])
        summary.append(f"next token at T={ref['temperature']:g}: {shown}")
    path = out / "inspect.json"
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")
    written.append(path)
    return written


def _check_layer_head(args, n_layers: int, n_heads: int) -> None:
    for name, value, n in (("--layer", args.layer, n_layers), ("--head", args.head, n_heads)):
        if value is not None and not 0 <= value < n:
            raise AttnkitError(f"{name} {value} is out of range (the model has {n}, "
                               f"numbered 0 to {n - 1})")


def _heatmaps(weights, args, out: Path, prefix: str, what: str, rows: list[str],
              cols: list[str], xlabel: str, ylabel: str) -> list[Path]:
    """One PNG per (layer, head) of ``weights`` (L, nh, T, S), as --layer/--head select."""
    from attnkit.viz import plots

    written = []
    for layer in range(weights.shape[0]):
        if args.layer is not None and layer != args.layer:
            continue
        for head in range(weights.shape[1]):
            if args.head is not None and head != args.head:
                continue
            written.append(plots.attention_heatmap(
                weights[layer, head].numpy(), rows, out / f"{prefix}_layer{layer}_head{head}.png",
                f"{what}, layer {layer}, head {head}", keys=cols, xlabel=xlabel, ylabel=ylabel))
    return written


def inspect_seq2seq(model, tok, args, out: Path, summary: list[str]) -> list[Path]:
    """Translate the prompt greedily, then draw the attention of that very pass: cross-attention
    (each output token against the source: the alignment picture), the encoder's
    self-attention over the source, and the decoder's over its own output."""
    import torch

    from attnkit.data.pairs import special_ids
    from attnkit.generate.beam import translate_ids
    from attnkit.viz import inspect as nums

    pad, bos, eos = special_ids(tok)
    src = _encode(model, tok, args.prompt) + [eos]
    if len(src) > model.cfg.context_length:
        raise AttnkitError(f"the prompt is {len(src) - 1} tokens plus EOS but the model's context "
                           f"is {model.cfg.context_length} (shorten the prompt)")
    produced = translate_ids(model, [src], pad_id=pad, bos_id=bos, eos_id=eos)[0]
    device = next(model.parameters()).device
    src_ids = torch.tensor([src], device=device)
    dec_in = torch.tensor([[bos] + produced[:-1]], device=device)  # row i produces produced[i]
    maps = model.attention_maps(src_ids, dec_in)
    weights = {k: torch.stack([m[0].float().cpu() for m in v]) for k, v in maps.items()}
    _check_layer_head(args, *weights["cross"].shape[:2])
    src_tokens = [nums.token_label(tok, i) for i in src]
    out_tokens = [nums.token_label(tok, i) for i in produced]
    in_tokens = [nums.token_label(tok, i) for i in dec_in[0].tolist()]
    translation = tok.decode([i for i in produced if i != eos])
    written = _heatmaps(weights["cross"], args, out, "cross_attention", "cross-attention",
                        out_tokens, src_tokens, "source token (attended to)", "output token")
    written += _heatmaps(weights["encoder"], args, out, "encoder_attention",
                         "encoder self-attention", src_tokens, src_tokens, "key (source)",
                         "query (source)")
    written += _heatmaps(weights["decoder"], args, out, "decoder_attention",
                         "decoder self-attention", in_tokens, in_tokens, "key (decoder input)",
                         "query (decoder input)")
    data = {"run": str(args.run), "family": model.cfg.family, "prompt": args.prompt,
            "translation": translation, "source_ids": src, "source_tokens": src_tokens,
            "output_ids": produced, "output_tokens": out_tokens, "decoder_input_tokens": in_tokens,
            "attention": {k: {"shape": list(w.shape), "weights": w.round(decimals=6).tolist()}
                          for k, w in weights.items()},
            "cross_attention_entropy": nums.attention_entropy(weights["cross"]).tolist()}
    path = out / "inspect.json"
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")
    written.append(path)
    n_layers, n_heads = weights["cross"].shape[:2]
    summary.append(f"translation: {translation!r}")
    summary.append(f"cross-attention: {n_layers} layers x {n_heads} heads, {len(out_tokens)} output "
                   f"x {len(src_tokens)} source tokens (rows: output tokens; columns: source)")
    return written


def inspect_embeddings(model, tok, out: Path, summary: list[str]) -> list[Path]:
    """The token table (``tok_emb``, which every family that does not translate has) on its
    first two principal axes: a scatter PNG and its JSON."""
    from attnkit.viz import inspect as nums
    from attnkit.viz import plots

    emb = model.tok_emb  # a translating model, with two tables, was refused by run()
    coords, explained = nums.embedding_pca(emb.weight, 2)
    if coords.shape[1] < 2:
        raise AttnkitError("the embedding table has fewer than 2 dimensions; nothing to plot")
    labels = [nums.token_label(tok, i) for i in range(coords.shape[0])]
    png = plots.pca_scatter(coords, labels, explained, out / "embeddings_pca.png")
    path = out / "embeddings_pca.json"
    path.write_text(json.dumps({
        "vocab_size": coords.shape[0],
        "explained_variance_ratio": explained.tolist(),
        "points": [{"id": i, "token": t, "x": float(c[0]), "y": float(c[1])}
                   for i, (t, c) in enumerate(zip(labels, coords.tolist()))],
    }) + "\n", encoding="utf-8")
    summary.append(f"embeddings: {coords.shape[0]} tokens x {emb.weight.shape[1]} dims; the first "
                   f"two principal axes explain {100 * float(explained.sum()):.1f}% of the variance")
    return [png, path]



def run_image(loaded, args: argparse.Namespace) -> int:
    """``--image FILE`` or ``--index N`` on a model with ``abilities.images``: the image with
    its class probabilities (``prediction.png``), the attention rollout after each layer laid
    over it (``attention_rollout.png``) and the numbers of both (``inspect.json``)."""
    from attnkit.backends import accelerate

    text = _given(args, TEXT_OPTIONS)
    if text:
        raise AttnkitError(f"{text[0]} is for text models, and {args.run} reads images (give "
                           f"--image FILE or --index N)")
    if args.image is not None and args.index is not None:
        raise AttnkitError("--image and --index both choose the image to inspect (give one of them)")
    if args.image is None and args.index is None:
        raise AttnkitError(f"nothing to inspect: {args.run} reads images, so give --image FILE "
                           f"or --index N (the N-th image of its held-out split)")
    pixels, true, labels = _read_image(loaded, args)  # refused before anything is written
    accelerate(loaded.model, purpose="decode", backend=args.backend)
    out = _out_dir(args)
    summary: list[str] = []
    written = inspect_image(loaded.model, pixels, true, labels, args, out, summary)
    _report(out, written, summary)
    return 0


def _read_image(loaded, args: argparse.Namespace):
    """The image (C, H, W) in [-1, 1] as the model reads it, its true class id (``--index``
    only, else None) and the class names."""
    from attnkit.data.images import image_to_tensor, load_images, open_image

    cfg = loaded.model.cfg
    labels = loaded.labels or [str(i) for i in range(cfg.n_labels)]
    if args.image is not None:
        path = args.image
        if not path.exists():
            raise AttnkitError(f"image not found: {path}")
        if path.is_dir():
            raise AttnkitError(f"{path} is a folder (give one image file, e.g. a PNG or JPEG)")
        return image_to_tensor(open_image(path), cfg.image_size, cfg.channels), None, labels
    data_cfg = loaded.config.data
    try:
        data = load_images(data_cfg.path, cfg.image_size, data_cfg.val_fraction)
    except AttnkitError as e:
        raise AttnkitError(f"--index reads the held-out images of {args.run} from "
                           f"data.path={data_cfg.path}, which fails here: {e}") from None
    if loaded.labels is not None and data.labels != loaded.labels or data.channels != cfg.channels:
        raise AttnkitError(f"data.path={data_cfg.path} no longer holds the images {args.run} was "
                           f"trained on (other classes or channels; give --image FILE instead)")
    n = len(data.val_y)
    if not 0 <= args.index < n:
        raise AttnkitError(f"--index {args.index} is out of range: {args.run} has {n} held-out "
                           f"images, numbered 0 to {n - 1}")
    return data.val_x[args.index], int(data.val_y[args.index]), labels


def inspect_image(model, pixels, true: int | None, labels: list[str], args: argparse.Namespace,
                  out: Path, summary: list[str]) -> list[Path]:
    """Class probabilities and attention rollout of one image (C, H, W) in [-1, 1]."""
    import torch

    from attnkit.viz import plots, vision

    cfg = model.cfg
    probs = vision.class_probabilities(model, pixels)  # (L,)
    predicted = int(probs.argmax())
    image = vision.display_image(pixels)
    where = f"held-out image {args.index}" if args.image is None else args.image.name
    verdict = f"predicted {labels[predicted]} ({float(probs[predicted]):.3f})"
    if true is not None:
        verdict += f", true {labels[true]}"
    written = [plots.class_probabilities(image, probs.tolist(), labels, out / "prediction.png",
                                         f"{where}\n{verdict}", true=true)]

    rollout = vision.attention_rollout(vision.attention_maps(model, pixels))  # (nl, T, T)
    relevance = vision.patch_relevance(rollout, cfg.pool, cfg.grid)  # (nl, g, g)
    mass = relevance.sum(dim=(-2, -1))  # (nl,): the rest is on the class token's own input
    shares = relevance / mass[:, None, None]  # (nl, g, g), each summing to 1: comparable panels
    n_layers, n = len(shares), cfg.n_patches
    heat = torch.stack([vision.upsample(s, cfg.image_size) for s in shares])  # (nl, H, W)
    titles = ["layer 0" if k == 0 else f"layers 0-{k}" for k in range(n_layers)]
    titles[-1] = f"all {n_layers} layers (combined)" if n_layers > 1 else "layer 0 (all layers)"
    reader = "the class token" if cfg.pool == "cls" else "the mean of the patch tokens"
    written.append(plots.rollout_panels(
        image, heat.numpy(), titles, out / "attention_rollout.png",
        f"attention rollout (Abnar & Zuidema 2020): what {reader} draws on, per patch\n"
        f"{where}: {verdict}", cfg.patch_size, f"share per patch (uniform: {1 / n:.3f})",
        vmax=2 / n))  # a uniform rollout sits mid-scale, not at the top

    data = {
        "run": str(args.run), "family": cfg.family,
        "image": None if args.image is None else str(args.image), "index": args.index,
        "labels": labels, "probabilities": probs.tolist(),
        "predicted": {"id": predicted, "label": labels[predicted], "prob": float(probs[predicted])},
        "true": None if true is None else {"id": true, "label": labels[true]},
        "rollout": {"pool": cfg.pool, "grid": [cfg.grid, cfg.grid], "patch_size": cfg.patch_size,
                    "layers": n_layers, "patch_mass": mass.tolist(),
                    "grids": shares.round(decimals=6).tolist(),
                    "combined": shares[-1].round(decimals=6).tolist()},
    }
    path = out / "inspect.json"
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")
    written.append(path)

    line = f"predicted: {labels[predicted]} (p = {float(probs[predicted]):.3f})"
    summary.append(line + ("" if true is None else f"; true: {labels[true]}"))
    r, c = divmod(int(shares[-1].argmax()), cfg.grid)
    summary.append(f"attention rollout through {n_layers} layers, {cfg.grid}x{cfg.grid} patches: "
                   f"{reader} puts {float(mass[-1]):.0%} of its weight on the patches, the most "
                   f"({float(shares[-1].max()):.3f} of that) on row {r}, column {c}")
    return written
