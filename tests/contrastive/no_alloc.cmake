# Steady-state steps of every contrastive head (and the distributed heads on local_group
# threads) perform no heap allocation; replaces operator new/malloc, so its own executable.
find_package(Threads REQUIRED)
mmfuse_add_test(test_contrastive_no_alloc SOURCES test_no_alloc.cpp LIBS Threads::Threads LABELS contrastive)
