"""The grid of combine and both decode kernels: one program per (row, BLOCK columns),
rows * cdiv(N, BLOCK) programs, the column blocks of a row consecutive."""
import triton
import triton.language as tl


@triton.jit
def row_and_columns(N, BLOCK: tl.constexpr):
    """This program's row, its BLOCK column indices, and which of them are below N."""
    pid = tl.program_id(0)
    col_blocks = tl.cdiv(N, BLOCK)
    cols = (pid % col_blocks) * BLOCK + tl.arange(0, BLOCK)
    return pid // col_blocks, cols, cols < N
