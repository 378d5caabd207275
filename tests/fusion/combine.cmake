# Protocols, templates (early / late / hybrid / stages) and the parameter-free fusers.
mmfuse_add_test(test_fusion_core SOURCES test_combine.cpp LABELS fusion)
