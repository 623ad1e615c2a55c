// libtmoe.so is tmoe_core linked whole; only the TMOE_API symbols are visible.
