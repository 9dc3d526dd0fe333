"""`make bench`: CPU (and CUDA) benchmarks of training, sampling and preparation; not part of the tests."""
