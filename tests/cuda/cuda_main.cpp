// Catch2 main of the [cuda] tests: lists tests anywhere (CTest discovery at build time), but
// runs them only where a CUDA GPU is present. Without one it prints why and returns 77,
// which CTest reports as SKIPPED (SKIP_RETURN_CODE), never as passed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "mmfuse/backend/cuda/runtime.hpp"

int main(int argc, char** argv) {
    Catch::Session session;
    if (const int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
    const auto& cfg = session.configData();
    const bool listing =
        cfg.listTests || cfg.listTestNamesOnly || cfg.listTags || cfg.listReporters || cfg.showHelp;
    if (!listing && mmfuse::backend::cuda::device_count() == 0) {
        std::puts("SKIPPED: no CUDA GPU on this machine (the [cuda] tests need one; "
                  "tools/cuda/device_run.sh runs them on a GPU machine)");
        return 77;
    }
    return session.run();
}
