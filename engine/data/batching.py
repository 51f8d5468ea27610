"""Micro-batches as the model takes them: padding-free (one row of concatenated examples) or right-padded rows.

Padding-free is the fast path's format (engine.patching.modules.FastAttention with kernels.varlen_attention): a
micro-batch's examples (or packed sequences, whose examples are segments of their own) are concatenated into ONE row
(1, T). Each example's position ids restart at 0, `cu_seq_lens_q` / `cu_seq_lens_k` (transformers' names for the
attention modules' keyword arguments) say where each starts, and attention stays within an example, so no padding
token is computed and no (T, T) mask is built. Each example's first label is -100: in a padded row it is shifted out;
here it would be predicted from the previous example's last token.

Shapes repeat: T is rounded up to one of a few buckets and the tail is a padding segment of its own (pad tokens,
labels -100, positions from 0), and cu_seqlens always has the run's fixed length (`segment_slots`; unused entries
repeat T, i.e. empty segments). One bucket is then one shape, so CUDA graphs and the memory plan are made once per
bucket (engine.patching.graphs, engine.memory.checkpointing). A run knows its micro-batches in advance (a seeded
shuffle per epoch), so its buckets are chosen for them (`plan_buckets`): the sizes that cost least in padded tokens
plus a fixed price per shape, which is a CUDA graph capture and an eager step where the layers are captured.
Without that plan (a TRL batch, a benchmark row) the sizes are fixed ones (`buckets`).

Any model still takes the padding-free row: transformers' sdpa and eager masks detect the restarting position ids as
separate sequences (masking_utils.find_packed_sequence_indices). The loop uses it only where the model's attention
takes cu_seqlens (`engine.patching.modules.takes_varlen`); elsewhere that dense (T, T) mask over the whole micro-batch
would cost batch_size times a padded batch's, so the plain path keeps right-padded rows (`padded`).
"""

SMALL_STEP = 64  # buckets are multiples of this up to SMALL_MAX tokens
SMALL_MAX = 512
GROWTH = 1.25  # then each bucket is ~1.25x the last (at most 25% padding), rounded up to a multiple of LARGE_STEP
LARGE_STEP = 128


def buckets(cap: int) -> list[int]:
    """Every token count a micro-batch is padded to, ascending, when a micro-batch holds at most `cap` tokens:
    multiples of SMALL_STEP up to SMALL_MAX, then ~GROWTH times the last, rounded up to LARGE_STEP; `cap` last."""
    sizes = list(range(SMALL_STEP, min(SMALL_MAX, cap) + 1, SMALL_STEP))
    size = SMALL_MAX
    while size < cap:
        size = -(-int(size * GROWTH) // LARGE_STEP) * LARGE_STEP
        sizes.append(min(size, cap))
    if not sizes or sizes[-1] < cap:
        sizes.append(cap)
    return sizes


# At most this many sizes a run: engine.patching.graphs holds this many shapes' graphs, so none is captured twice.
MAX_BUCKETS = 8
# The price of one more shape, in padded tokens, where the layers are captured as CUDA graphs: a new bucket's eager step
# and capture took 0.7-0.9 s on the H200 while the captured steps ran at 19,000-24,000 tokens/s (qwen3_4b QLoRA, the
# shared e2e run at commit f2709af; bench/README.md), i.e. the time of ~20,000 tokens.
GRAPH_SHAPE_COST = 20_000
# The price of a size that only one micro-batch of the run lands in, where the layers are captured: it is never
# captured (engine.patching.graphs captures a shape at its second micro-batch, and leaves out the run's sizes of one
# micro-batch, `used_once`, even at the first step), so it costs one eager step's extra time. An eager step took
# 0.186 s on the H100 against 0.040 s captured on the H200 (identity, 576 tokens, bench/README.md), i.e. ~0.15 s:
# the time of ~3,200 tokens at the 21,500 tokens/s of the H200's captured Alpaca-like steps; rounded up. An
# Alpaca-like file's longest example then gets a size of its own instead of setting the size of every micro-batch.
EAGER_STEP_COST = 4_000


def plan_buckets(counts, shape_cost: int, most: int = MAX_BUCKETS, once_cost: int | None = None) -> list[int]:
    """The bucket sizes (ascending multiples of SMALL_STEP, at most `most`) for a run whose micro-batches hold
    `counts` tokens each, chosen to minimise the padded tokens of the whole run plus `shape_cost` per size, or
    `once_cost` (default: `shape_cost`) for a size that only one micro-batch lands in.

    Dynamic programming over the distinct counts (each rounded up to SMALL_STEP): a size covers a run of
    consecutive counts and is the largest of them; best[b][i] is the least cost of covering the i smallest with b
    sizes. The largest count is always a size, so every micro-batch of the run has a bucket."""
    import numpy as np

    if not counts:
        return [SMALL_STEP]
    once_cost = shape_cost if once_cost is None else once_cost
    rounded = np.asarray([-(-max(int(c), 1) // SMALL_STEP) * SMALL_STEP for c in counts], dtype=np.int64)
    sizes, freq = np.unique(rounded, return_counts=True)
    n = len(sizes)
    many = np.concatenate([[0], np.cumsum(freq)])  # micro-batches among the i smallest counts
    tokens = np.concatenate([[0], np.cumsum(freq * sizes)])  # their tokens
    inf = np.iinfo(np.int64).max // 4
    best = np.full((most + 1, n + 1), inf, dtype=np.int64)
    best[0, 0] = 0
    choice = np.zeros((most + 1, n + 1), dtype=np.int64)
    for b in range(1, most + 1):
        for i in range(1, n + 1):
            # sizes[i - 1] covers counts j..i-1: the padding of each up to it
            pad = sizes[i - 1] * (many[i] - many[:i]) - (tokens[i] - tokens[:i])
            total = best[b - 1, :i] + pad + np.where(many[i] - many[:i] == 1, once_cost, shape_cost)
            j = int(np.argmin(total))
            best[b, i], choice[b, i] = total[j], j
    b = int(np.argmin(best[:, n]))
    chosen, i = [], n
    while i > 0:
        chosen.append(int(sizes[i - 1]))
        i, b = int(choice[b, i]), b - 1
    return chosen[::-1]


def planned(examples, run, shape_cost: int, most: int = MAX_BUCKETS, once_cost=None) -> tuple[list[int], float]:
    """The bucket sizes `plan_buckets` picks for a run's micro-batches (`run`: each one's example indices) and the
    share of the padded tokens that is padding."""
    counts = [sum(len(examples[i].input_ids) for i in micro) for micro in run]
    sizes = plan_buckets(counts, shape_cost, most, once_cost)
    padded_tokens = sum(next(s for s in sizes if s >= c) for c in counts)
    return sizes, 1 - sum(counts) / padded_tokens


def used_once(examples, run, sizes) -> set[int]:
    """The sizes that exactly one of the run's micro-batches is padded to."""
    from collections import Counter

    counts = [sum(len(examples[i].input_ids) for i in micro) for micro in run]
    uses = Counter(next(s for s in sizes if s >= c) for c in counts)
    return {size for size, n in uses.items() if n == 1}


def bucket(tokens: int, cap: int) -> int:
    """The bucket a micro-batch of `tokens` tokens (at most `cap`) is padded to: the smallest of `buckets(cap)`."""
    return next(size for size in buckets(cap) if size >= tokens)


def segments_of(example) -> tuple[int, ...]:
    """The lengths of the examples an Example holds (a packed sequence holds several)."""
    return example.segments or (len(example.input_ids),)


def segment_slots(examples, batch_size: int) -> int:
    """The fixed number of cu_seqlens entries of a run: one more than the most segments a micro-batch can hold (its
    `batch_size` examples with the most segments, plus the padding segment)."""
    most = sorted((len(segments_of(e)) for e in examples), reverse=True)[:batch_size]
    return sum(most) + 2


def most_tokens(examples, batch_size: int) -> int:
    """The most tokens a micro-batch of `batch_size` of `examples` can hold: the cap of its buckets."""
    return sum(sorted((len(e.input_ids) for e in examples), reverse=True)[:batch_size])


def step_tokens(examples, batch_size: int, varlen: bool, joined: int = 1) -> int:
    """The most tokens, padding included, one micro-step over `examples` can compute (0 for none): padding-free
    (`varlen`), the `batch_size` x `joined` longest examples in one row (`joined` micro-batches that `join` makes one),
    rounded up to SMALL_STEP as `plan_buckets` rounds its sizes (a row past the planned sizes is padded to a bucket
    within its cap instead: `bucket`); right-padded (`padded`), `batch_size` rows of the longest example, rounded up
    the same way, so the figure also holds the padding-free micro-batches of `batch_size` examples."""
    if not examples:
        return 0
    longest = max(len(e.input_ids) for e in examples)
    tokens = most_tokens(examples, batch_size * joined) if varlen else batch_size * longest
    return -(-tokens // SMALL_STEP) * SMALL_STEP


def label_tokens(example) -> int:
    """The tokens `example`'s loss is taken over: its labels other than -100 past the first, which nothing predicts."""
    return sum(label != -100 for label in example.labels[1:])


def join(micro_batches, lengths, cap: int) -> list[list[int]]:
    """One optimizer step's micro-batches (example indices each), in order, joined into as few padding-free rows as
    hold at most `cap` tokens each (`lengths`: each example's tokens), as even as that many rows can be: the cut
    points that make the largest row smallest. A micro-batch is never split; one over `cap` is a row of its own. The
    rows' examples attend only within themselves and the step's loss weighs every label token alike, so the step
    computes the same gradient in fewer, larger micro-steps."""
    sizes = [sum(lengths[i] for i in micro) for micro in micro_batches]

    def cut(limit):  # rows in order, each taking the next micro-batch while it stays within `limit`
        rows, tokens = [], 0
        for micro, n in zip(micro_batches, sizes, strict=True):
            if rows and tokens + n <= limit:
                rows[-1] += micro
                tokens += n
            else:
                rows.append(list(micro))
                tokens = n
        return rows

    fewest = len(cut(cap))
    low, high = 1, max(cap, 1)  # the smallest limit that still gives `fewest` rows (fewer rows as it grows)
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if len(cut(mid)) <= fewest else (mid + 1, high)
    return cut(low)


def padding_free(examples, pad_id: int, device: str, slots: int, cap: int, sizes=None) -> dict:
    """The model inputs of one padding-free micro-batch: input_ids, labels, position_ids (1, T), cu_seq_lens_q /
    cu_seq_lens_k (int32, `slots` entries) and use_cache=False; T is the smallest of `sizes` (the run's planned
    buckets) that holds the tokens, else bucket(tokens, cap). Made as one host tensor and moved to the device in one
    copy (pinned on a GPU, so it does not wait for the GPU)."""
    import torch

    lengths = [n for e in examples for n in segments_of(e)]
    tokens = sum(lengths)
    width = next((size for size in sizes or () if size >= tokens), None) or bucket(tokens, cap)
    if len(lengths) + 2 > slots:
        raise ValueError(f"a micro-batch of {len(lengths)} segments needs more than the run's {slots} cu_seqlens")
    ids, labels = [], []
    for e in examples:
        ids += e.input_ids
        labels += [-100, *e.labels[1:]]
    pad = width - tokens
    if pad:
        lengths.append(pad)
    host = torch.empty(3 * width + slots, dtype=torch.long, pin_memory=device.startswith("cuda"))
    host[:width] = torch.tensor(ids + [pad_id] * pad)
    host[width : 2 * width] = torch.tensor(labels + [-100] * pad)
    host[2 * width : 3 * width] = torch.cat([torch.arange(n) for n in lengths])
    ends = torch.tensor(lengths).cumsum(0)
    host[3 * width] = 0
    host[3 * width + 1 : 3 * width + 1 + len(lengths)] = ends
    host[3 * width + 1 + len(lengths) :] = width  # empty segments: the same shape for every micro-batch
    moved = host.to(device, non_blocking=True)
    cu = moved[3 * width :].to(torch.int32)
    return dict(
        input_ids=moved[:width].view(1, width),
        labels=moved[width : 2 * width].view(1, width),
        position_ids=moved[2 * width : 3 * width].view(1, width),
        cu_seq_lens_q=cu,
        cu_seq_lens_k=cu,
        use_cache=False,  # transformers detects packed position ids only without a KV cache; training keeps none
    )


def padded(examples, pad_id: int, device: str) -> dict:
    """Right-padded model inputs. Packed examples get per-example position ids and a block-diagonal causal mask,
    so no token attends across an example boundary."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    batch = dict(input_ids=ids, labels=labels, attention_mask=mask)
    if any(len(e.segments) > 1 for e in examples):
        seg = torch.full((len(examples), width), -1, dtype=torch.long)
        pos = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            start = 0
            for k, n in enumerate(e.segments):
                seg[row, start : start + n] = k
                pos[row, start : start + n] = torch.arange(n)
                start += n
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        same = seg[:, :, None] == seg[:, None, :]
        itself = torch.eye(width, dtype=torch.bool)  # padding attends to itself: a fully masked row would give NaN
        batch.update(position_ids=pos, attention_mask=((same & causal) | itself)[:, None])
    return {k: v.to(device) for k, v in batch.items()}


class Collator:
    """Makes a run's micro-batches: padding-free when `varlen` (the model's attention takes cu_seqlens), else padded.
    `run`: the example indices of every micro-batch the run will make, when known, so the buckets are planned for
    them (`plan_buckets` with `shape_cost` and `once_cost`, at most `most` sizes: the shapes a memory plan holds graphs
    for), and with a `once_cost` `once` holds those that only one micro-batch lands in (run without graphs); else the
    fixed sizes. Where a step's micro-batches are joined into rows (`join`), `run` holds the rows, `joined` is the most
    micro-batches a row joins and `cap` the most tokens it holds. With `split`, a micro-batch whose size runs eagerly
    runs instead as rows of the largest captured size where that costs less (`rows`). Logs each bucket the first time
    a micro-batch lands in it."""

    def __init__(
        self,
        examples,
        batch_size: int,
        pad_id: int,
        device: str,
        varlen: bool,
        log=print,
        run=None,
        shape_cost=0,
        most: int = MAX_BUCKETS,
        once_cost=None,
        joined: int = 1,
        cap: int = 0,
        split: bool = False,
    ):
        self.pad_id, self.device, self.varlen, self.log = pad_id, device, varlen, log
        self.slots = segment_slots(examples, batch_size * joined)
        self.cap = max(most_tokens(examples, batch_size), cap)
        self.sizes = buckets(self.cap)
        self.seen = set()
        self.once = set()
        self.lengths = [len(e.input_ids) for e in examples]
        self.split_to = 0  # rows over this many tokens run as rows of at most this many (`rows`); 0: none
        self.padded_to = 0  # right-padded: micro-batches run as parts of at most this many padded tokens; 0: whole
        if varlen and run:
            self.sizes, share = planned(examples, run, shape_cost, most, once_cost)
            self.once = used_once(examples, run, self.sizes) if once_cost else set()
            one, what, units = (
                ("micro-batch", "each micro-batch one row", "micro-batches")
                if joined == 1
                else ("row", "each row", "rows")
            )
            alone = f"; {', '.join(map(str, sorted(self.once)))} for one {one}, run eagerly" if self.once else ""
            if split and self.once:
                alone = self._split(run, once_cost, one) or alone
            if self.split_to:
                counts = [sum(self.lengths[i] for i in part) for row in run for part in self.rows(row)]
                share = 1 - sum(counts) / sum(next(s for s in self.sizes if s >= c) for c in counts)
            log(
                f"batches: padding-free, {what} rounded up to one of {len(self.sizes)} sizes planned for the run's "
                f"{len(run)} {units} ({', '.join(map(str, self.sizes))} tokens{alone}; {100 * share:.1f}% padding; "
                f"{self.slots} cu_seqlens entries)"
            )
        elif varlen:
            log(
                f"batches: padding-free, each micro-batch one row of up to {self.cap} tokens rounded up to one of "
                f"{len(self.sizes)} sizes ({self.slots} cu_seqlens entries)"
            )
        else:
            log("batches: right-padded rows (the model's attention does not take cu_seqlens)")

    def _split(self, run, once_cost: int, one: str) -> str:
        """Where every size above the largest captured one holds one micro-batch (run eagerly, ~`once_cost` tokens'
        time more than captured) and that micro-batch's examples make rows of the captured size that cost less (their
        padded tokens against its size plus `once_cost`), it runs as those rows: the same gradient, since a step's
        loss weighs its rows by their label tokens. Says so for the log line."""
        captured = max((size for size in self.sizes if size not in self.once), default=0)
        above = [size for size in self.sizes if size > captured]
        if not captured or not above or not set(above) <= self.once:
            return ""
        over = [row for row in run if sum(self.lengths[i] for i in row) > captured]
        parts = [join([[i] for i in row], self.lengths, captured) for row in over]
        if any(self.lengths[i] > captured for row in over for i in row):
            return ""  # an example longer than the captured size: no rows of it hold that one
        if sum(len(p) * captured for p in parts) >= sum(above) + once_cost * len(above):
            return ""
        self.split_to = captured
        self.sizes = [size for size in self.sizes if size <= captured]
        self.once -= set(above)
        return (
            f"; the {len(over)} {one}(s) over {captured} tokens as {sum(map(len, parts))} rows of up to {captured} "
            f"instead of an eager step in a size of its own ({', '.join(map(str, above))})"
        )

    def rows(self, row) -> list[list[int]]:
        """`row` (example indices) as the rows it runs as: itself, or, over `split_to` tokens, its examples in order
        as the fewest rows of at most `split_to` tokens (`join`); right-padded with `padded_to`, its examples in order
        in parts whose padded size (examples x the longest) is at most that."""
        if self.padded_to and not self.varlen:
            parts, longest = [], 0
            for i in row:
                if parts and (len(parts[-1]) + 1) * max(longest, self.lengths[i]) <= self.padded_to:
                    parts[-1].append(i)
                    longest = max(longest, self.lengths[i])
                else:
                    parts.append([i])
                    longest = self.lengths[i]
            return parts
        if not self.split_to or sum(self.lengths[i] for i in row) <= self.split_to:
            return [row]
        return join([[i] for i in row], self.lengths, self.split_to)

    def __call__(self, examples) -> dict:
        if not self.varlen:
            return padded(examples, self.pad_id, self.device)
        batch = padding_free(examples, self.pad_id, self.device, self.slots, self.cap, self.sizes)
        width = batch["input_ids"].shape[1]
        if width not in self.seen:
            self.seen.add(width)
            self.log(f"batches: first micro-batch of {width} tokens (bucket {len(self.seen)})")
        return batch
