// The backend registry and the Eigen device's contract.
#include <catch2/catch.hpp>

#include "mmfuse/backend/registry.hpp"

using namespace mmfuse;

TEST_CASE("registry: eigen is always compiled in and findable", "[core][backend]") {
    auto& reg = backend::registry::global();
    REQUIRE(reg.devices().size() >= 1);
    REQUIRE(reg.devices()[0]->name() == "eigen");
    auto& eig = reg.get("eigen");
    REQUIRE(eig.kind() == backend::device_kind::cpu);
    REQUIRE(eig.memory() == memory_space::host);
    REQUIRE(&reg.best() != nullptr);
    REQUIRE(reg.find("no-such-backend") == nullptr);
    REQUIRE_THROWS_WITH(
        reg.get("no-such-backend"),
        Catch::Contains("no backend named 'no-such-backend'") && Catch::Contains("eigen"));
    REQUIRE(&backend::default_stream().device() == &eig);
    auto s = eig.create_stream();
    REQUIRE(&s->device() == &eig);
}

TEST_CASE("eigen device: supports f32/f64 everywhere, storage types for copy only",
          "[core][backend]") {
    auto& eig = backend::registry::global().get("eigen");
    REQUIRE(eig.supports(ops::matmul_desc{}, dtype::f32));
    REQUIRE(eig.supports(ops::softmax_desc{}, dtype::f64));
    REQUIRE_FALSE(eig.supports(ops::matmul_desc{}, dtype::bf16));
    REQUIRE(eig.supports(ops::copy_desc{}, dtype::bf16));
    REQUIRE_FALSE(eig.supports(ops::matmul_desc{}, dtype::i32));
}

TEST_CASE("eigen stream refuses device memory with backend_error", "[core][backend]") {
    float buf[4] = {};
    tensor_ref<float> dev(buf, {2, 2}, memory_space::device);
    std::array<any_tensor_ref, 2> in{any_tensor_ref(tensor_ref<float>(buf, {2, 2})), dev};
    std::array<any_tensor_ref, 1> out{any_tensor_ref(tensor_ref<float>(buf, {2, 2}))};
    REQUIRE_THROWS_WITH(backend::default_stream().execute(ops::matmul_desc{}, in, out),
                        Catch::Contains("device memory"));
}
