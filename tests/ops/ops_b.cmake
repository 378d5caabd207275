# Ops group B: softmax, layer norm, RMS norm (Eigen reference) and the parity scaffolding.
# Included from tests/ops/CMakeLists.txt. With the oneDNN component, the parity test also
# runs every op case on the onednn device.
mmfuse_add_test(test_ops_b SOURCES test_softmax.cpp test_norm.cpp test_parity.cpp
                LIBS $<TARGET_NAME_IF_EXISTS:mmfuse::onednn>)
