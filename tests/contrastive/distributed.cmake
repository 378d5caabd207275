# Data-parallel contrastive heads on emulated ranks (local_group runs them on std::threads).
find_package(Threads REQUIRED)
mmfuse_add_test(test_contrastive_distributed SOURCES test_distributed.cpp LIBS Threads::Threads LABELS contrastive)
