"""Fast convolution kernels shared by the energy-based networks and the sparse coders: Winograd
convolutions (``winograd``) whose tile transforms are C kernels (``_tiles.c``) built at first
use (``native``)."""
