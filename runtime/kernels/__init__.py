"""Hand-written attention kernels (Triton); imported lazily by the backends that launch them."""
