"""Stage 2, align: expert ids -> the alignment of src/core/align.hpp, on the device.

Two launches over the same grid: one program per CHUNK of slots, and more where the
fills below would otherwise loop (the host sizes the grid, performance-log.md #28):
  align_count    per-chunk expert histograms into chunk_counts [num_chunks, E], and
                 the sentinel into every position of sorted_slots, CHUNK positions
                 per program and step;
  align_scatter  every program sums the histograms (totals, and the chunks before
                 its own), derives counts and offsets, writes its chunk's slots (if
                 it has one) at their stable positions (and each slot's position
                 into slot_positions, the inverse map), and its share of
                 block_expert, BLOCK_B entries per step.
align_count_scatter does both in one launch where the chunks are few (every program
histograms them all; the sentinel goes only where no slot does, performance-log.md #48).
No atomics: the output is a function of the ids alone.
"""
import triton
import triton.language as tl

from kernels.dependent_launch import wait_for_previous_kernel

PADDING_ROWS = tl.constexpr(16)  # sentinel positions per block and step in align_count_scatter


@triton.jit
def chunk_ids(topk_ids, chunk, num_slots, CHUNK: tl.constexpr):
    """Lanes of the chunk, which of them hold a slot, and those slots' experts."""
    lanes = tl.arange(0, CHUNK)
    is_slot = chunk * CHUNK + lanes < num_slots
    experts = tl.load(topk_ids + chunk * CHUNK + lanes, mask=is_slot, other=0)
    return lanes, is_slot, experts


@triton.jit
def align_count(topk_ids, chunk_counts, sorted_slots, num_slots, E, capacity, CHUNK: tl.constexpr,
                BLOCK_E: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous_kernel(PDL)
    chunk = tl.program_id(0)
    lanes, is_slot, experts = chunk_ids(topk_ids, chunk, num_slots, CHUNK)
    if chunk < tl.cdiv(num_slots, CHUNK):
        counts = tl.histogram(experts, BLOCK_E, mask=is_slot)
        bins = tl.arange(0, BLOCK_E)
        tl.store(chunk_counts + chunk * E + bins, counts, mask=bins < E)
    # Padding holds the sentinel num_slots; align_scatter overwrites the real positions.
    for start in range(chunk * CHUNK, capacity, tl.num_programs(0) * CHUNK):
        tl.store(sorted_slots + start + lanes, num_slots, mask=start + lanes < capacity)


@triton.jit
def align_scatter(topk_ids, chunk_counts, expert_counts, expert_offsets, sorted_slots, slot_positions, block_expert,
                  num_slots, E, block_m, capacity, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr,
                  PDL: tl.constexpr):
    wait_for_previous_kernel(PDL)
    chunk = tl.program_id(0)
    bins = tl.arange(0, BLOCK_E)
    counts = tl.zeros([BLOCK_E], tl.int32)
    counts_before = tl.zeros([BLOCK_E], tl.int32)  # slots of each expert in earlier chunks
    for c in range(tl.cdiv(num_slots, CHUNK)):
        row = tl.load(chunk_counts + c * E + bins, mask=bins < E, other=0)
        counts += row
        counts_before += tl.where(c < chunk, row, 0)
    write_alignment(topk_ids, counts, counts_before, expert_counts, expert_offsets, sorted_slots, slot_positions,
                    block_expert, num_slots, E, block_m, capacity, CHUNK, BLOCK_E, BLOCK_B, False)


@triton.jit
def align_count_scatter(topk_ids, expert_counts, expert_offsets, sorted_slots, slot_positions, block_expert, num_slots,
                        E, block_m, capacity, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr,
                        PDL: tl.constexpr):
    """align_count and align_scatter in one launch for few chunks: every program
    histograms every chunk itself, and the sentinel goes only where no slot does."""
    wait_for_previous_kernel(PDL)
    chunk = tl.program_id(0)
    counts = tl.zeros([BLOCK_E], tl.int32)
    counts_before = tl.zeros([BLOCK_E], tl.int32)
    for c in range(tl.cdiv(num_slots, CHUNK)):
        _, is_slot, experts = chunk_ids(topk_ids, c, num_slots, CHUNK)
        row = tl.histogram(experts, BLOCK_E, mask=is_slot)
        counts += row
        counts_before += tl.where(c < chunk, row, 0)
    write_alignment(topk_ids, counts, counts_before, expert_counts, expert_offsets, sorted_slots, slot_positions,
                    block_expert, num_slots, E, block_m, capacity, CHUNK, BLOCK_E, BLOCK_B, True)


@triton.jit
def write_alignment(topk_ids, counts, counts_before, expert_counts, expert_offsets, sorted_slots, slot_positions,
                    block_expert, num_slots, E, block_m, capacity, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr,
                    BLOCK_B: tl.constexpr, FILL_PADDING: tl.constexpr):
    """From the experts' slot counts (all chunks, and the chunks before this program's):
    counts, offsets, this program's chunk of sorted_slots and of slot_positions (where
    combine finds the rows down wrote by padded position), its share of block_expert and,
    with FILL_PADDING, the sentinel in its blocks' positions past their expert's slots."""
    chunk = tl.program_id(0)
    num_chunks = tl.cdiv(num_slots, CHUNK)
    bins = tl.arange(0, BLOCK_E)
    is_expert = bins < E
    padded = (counts + block_m - 1) // block_m * block_m
    ends = tl.cumsum(padded, 0)
    starts = ends - padded
    padded_total = tl.sum(padded, 0)
    if chunk == 0:
        tl.store(expert_counts + bins, counts, mask=is_expert)
        tl.store(expert_offsets + bins, starts, mask=is_expert)
        tl.store(expert_offsets + E, padded_total)

    # Sorting (expert, lane) keys lists the chunk's slots by expert, then slot: the
    # stable order. A slot's position is then its expert's base plus its index in
    # the sorted chunk, less the chunk slots of earlier experts.
    if chunk < num_chunks:
        lanes, is_slot, experts = chunk_ids(topk_ids, chunk, num_slots, CHUNK)
        local_counts = tl.histogram(experts, BLOCK_E, mask=is_slot)
        local_starts = tl.cumsum(local_counts, 0) - local_counts
        keys = tl.sort(tl.where(is_slot, experts * CHUNK + lanes, BLOCK_E * CHUNK + lanes))
        sorted_experts = keys // CHUNK
        base = tl.gather(starts + counts_before - local_starts, tl.minimum(sorted_experts, BLOCK_E - 1), 0)
        is_slot_key = sorted_experts < BLOCK_E
        tl.store(sorted_slots + base + lanes, chunk * CHUNK + keys % CHUNK, mask=is_slot_key)
        tl.store(slot_positions + chunk * CHUNK + keys % CHUNK, base + lanes, mask=is_slot_key)

    # Block b belongs to the first expert whose region ends past b*block_m, i.e. to
    # expert number (count of regions ending at or before it); -1 past the total.
    num_blocks = capacity // block_m
    for first in range(chunk * BLOCK_B, num_blocks, tl.num_programs(0) * BLOCK_B):
        blocks = first + tl.arange(0, BLOCK_B)
        first_rows = blocks * block_m
        ended = (ends[None, :] <= first_rows[:, None]) & is_expert[None, :]
        expert = tl.where(first_rows < padded_total, tl.sum(ended.to(tl.int32), 1), -1)
        tl.store(block_expert + blocks, expert, mask=blocks < num_blocks)
        if FILL_PADDING:
            # A block's slots end where its expert's do; every position after holds the sentinel.
            slots_end = tl.where(expert >= 0, tl.gather(starts + counts, tl.maximum(expert, 0), 0), 0)
            for row in range(0, block_m, PADDING_ROWS):
                rows = row + tl.arange(0, PADDING_ROWS)
                positions = first_rows[:, None] + rows[None, :]
                padding = (positions >= slots_end[:, None]) & (rows < block_m)[None, :] & (blocks < num_blocks)[:, None]
                tl.store(sorted_slots + positions, num_slots, mask=padding)
