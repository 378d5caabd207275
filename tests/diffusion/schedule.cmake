# Noise schedules, timestep grids, sigma schedules, conversions and training helpers
# (golden: diffusers / k-diffusion / edm tables from tools/golden/make_diffusion_fixtures.py).
mmfuse_add_test(test_diffusion_schedule SOURCES test_schedule.cpp test_training.cpp LABELS diffusion)
