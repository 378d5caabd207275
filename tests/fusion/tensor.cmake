mmfuse_add_test(test_fusion_tensor SOURCES test_tensor.cpp LABELS fusion)
