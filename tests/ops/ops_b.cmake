# Ops group B: softmax, layer norm, RMS norm (Eigen reference) and the parity scaffolding.
# Included from tests/ops/CMakeLists.txt.
mmfuse_add_test(test_ops_b SOURCES test_softmax.cpp test_norm.cpp test_parity.cpp)
