# Diffusion samplers: closed-form checks and [golden] replays of diffusers / k-diffusion / edm
# chains (tools/golden/make_diffusion_fixtures.py).
mmfuse_add_test(test_diffusion_samplers
  SOURCES test_samplers_closed_form.cpp test_samplers_golden_k.cpp
          test_samplers_golden_diffusers.cpp test_samplers_golden_multistep.cpp
          test_samplers_errors.cpp
  LABELS diffusion golden)
