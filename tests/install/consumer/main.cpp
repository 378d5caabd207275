// Consumer of an installed mmfuse: a 2x3 by 3x2 matmul on the Eigen stream, checked.
#include <cmath>
#include <cstdio>

#include <mmfuse/backend/registry.hpp>
#include <mmfuse/core/tensor.hpp>
#include <mmfuse/ops/matmul.hpp>

#ifdef MMFUSE_HAS_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif
#ifdef MMFUSE_HAS_CUDA
#include <mmfuse/backend/cuda/device.hpp>
#endif

int main() {
    namespace mf = mmfuse;
    mf::tensor<float> a({2, 3}), b({3, 2}), c({2, 2});
    for (int i = 0; i < 6; ++i) {
        a[i] = float(i + 1);  // a = [[1 2 3] [4 5 6]]
        b[i] = float(6 - i);  // b = [[6 5] [4 3] [2 1]]
    }
    c.fill(NAN);
    mf::ops::matmul(mf::backend::default_stream(), a.cref(), b.cref(), c.ref());
    // c = [[20 14] [56 41]]
    const float expected[4] = {20.f, 14.f, 56.f, 41.f};
    for (int i = 0; i < 4; ++i) {
        if (c[i] != expected[i]) {
            std::printf("consumer: c[%d] = %g, expected %g\n", i, double(c[i]),
                        double(expected[i]));
            return 1;
        }
    }
    std::printf("consumer: backends compiled in: %s\n",
                mf::backend::registry::global().names().c_str());
#ifdef MMFUSE_HAS_ONEDNN
    const dnnl_version_t* v = dnnl_version();
    std::printf("consumer: linked oneDNN %d.%d.%d\n", v->major, v->minor, v->patch);
#endif
#ifdef MMFUSE_HAS_CUDA
    // With a GPU the same product runs on cuda:0; without one, cuda must not be registered.
    namespace cu = mf::backend::cuda;
    if (cu::device_count() == 0) {
        if (mf::backend::registry::global().find("cuda:0") != nullptr) {
            std::printf("consumer: cuda:0 registered without a GPU\n");
            return 1;
        }
        std::printf("consumer: CUDA backend linked; no GPU here\n");
    } else {
        cu::device_tensor<float> da({2, 3}), db({3, 2}), dc({2, 2});
        cu::to_device<float>(a.cref(), da);
        cu::to_device<float>(b.cref(), db);
        auto& s = mf::backend::registry::global().get("cuda:0").default_stream();
        mf::ops::matmul(s, da.cref(), db.cref(), dc.ref());
        s.synchronize();
        c.fill(NAN);
        cu::to_host<float>(dc, c.ref());
        for (int i = 0; i < 4; ++i)
            if (c[i] != expected[i]) {
                std::printf("consumer: cuda c[%d] = %g, expected %g\n", i, double(c[i]),
                            double(expected[i]));
                return 1;
            }
        std::printf("consumer: the same matmul on cuda:0 agrees\n");
    }
#endif
    std::printf("consumer: ok\n");
    return 0;
}
