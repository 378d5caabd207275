# Contrastive objectives: multi-positive, NegCLIP, HN-NCE/DCL, distillation, ImageBind binding,
# and the gradient checks of clip_loss / siglip_loss.
mmfuse_add_test(test_contrastive_objectives SOURCES test_objectives.cpp LABELS contrastive)
