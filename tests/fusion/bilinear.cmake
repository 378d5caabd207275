mmfuse_add_test(test_fusion_bilinear SOURCES test_bilinear.cpp LABELS fusion)
