mmfuse_add_test(test_fusion_mult SOURCES test_mult.cpp LABELS fusion)
