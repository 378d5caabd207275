# contrastive/evaluation.hpp: retrieval ranks and metrics, zero-shot classifier and top-k.
mmfuse_add_test(test_contrastive_evaluation SOURCES test_evaluation.cpp LABELS contrastive)
