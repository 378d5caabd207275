# contrastive::projection_head and the nn::l2_normalize layer: gradchecks, unit norms, errors.
mmfuse_add_test(test_contrastive_projection SOURCES test_projection.cpp LABELS contrastive)
