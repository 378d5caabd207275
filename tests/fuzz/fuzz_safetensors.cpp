// libFuzzer target for the safetensors reader (mmfuse/io/safetensors.hpp).
//
// Contract checked on every input: `safetensors_file::parse` either throws `mmfuse::io_error`
// or returns a file whose every tensor can be read (as its own dtype, and as double when it is
// floating) without touching memory outside the input (ASan/UBSan). A file that parses and
// whose tensors all have mmfuse dtypes must survive a round trip: serialize it again, parse
// that, and get the same names, dtypes, shapes, metadata and bytes. Any other exception, a
// sanitizer report or a round-trip mismatch is a crash.
//
//     cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DMMFUSE_BUILD_FUZZERS=ON
//     cmake --build build-fuzz --target fuzz_safetensors
//     build-fuzz/tests/fuzz/fuzz_safetensors -dict=tests/fuzz/safetensors.dict \
//         -max_total_time=180 new_corpus/ tests/fuzz/corpus/safetensors/
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "mmfuse/io/safetensors.hpp"

using namespace mmfuse;

namespace {

[[noreturn]] void bug() {
    __builtin_trap();
}

/// Reads entry `e` as its own dtype; nullptr when the dtype has no mmfuse type or the data is
/// rejected (corrupt BOOL bytes), else an owning tensor kept alive by the returned pointer.
std::shared_ptr<void> read_own(const io::safetensors_file& f, const io::safetensors_entry& e,
                               any_tensor_ref& view) {
    const std::optional<dtype> t = io::to_dtype(e.type);
    if (!t) return nullptr;
    std::shared_ptr<void> keep;
    try {
        io::detail::visit_dtype(*t, [&]<class U>() {
            auto p = std::make_shared<tensor<U>>(f.read<U>(e.name));
            if (p->extents() != e.shape) bug();
            view = p->cref();
            keep = p;
        });
    } catch (const io_error&) {
        if (e.type != io::safetensors_dtype::boolean) bug();  // only BOOL data can be rejected
        return nullptr;
    }
    return keep;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
    std::optional<io::safetensors_file> f;
    try {
        f.emplace(io::safetensors_file::parse(bytes, "fuzz"));
    } catch (const io_error& e) {
        if (e.module() != "fuzz") bug();
        return 0;
    }
    if (f->data_offset() > size) bug();
    std::vector<std::shared_ptr<void>> keep;
    std::vector<io::named_tensor> list;
    bool round_trip = true;
    for (const io::safetensors_entry& e : f->entries()) {
        if (e.begin > e.end || e.end > size - f->data_offset()) bug();
        if (f->find(e.name) != &e) bug();
        if (io::is_floating(e.type)) (void)f->read<double>(e.name);
        any_tensor_ref view;
        std::shared_ptr<void> t = read_own(*f, e, view);
        if (!t) {
            round_trip = false;
            continue;
        }
        keep.push_back(std::move(t));
        list.push_back({e.name, view});
    }
    if (!round_trip) return 0;
    const std::vector<std::byte> again = io::serialize_safetensors(list, f->metadata(), "again");
    const io::safetensors_file g = io::safetensors_file::parse(again, "again");
    if (g.entries().size() != f->entries().size() || g.metadata() != f->metadata()) bug();
    for (const io::safetensors_entry& e : f->entries()) {
        const io::safetensors_entry* o = g.find(e.name);
        if (!o || o->type != e.type || o->shape != e.shape || o->end - o->begin != e.end - e.begin)
            bug();
        if (std::memcmp(again.data() + g.data_offset() + o->begin,
                        bytes.data() + f->data_offset() + e.begin, e.end - e.begin) != 0)
            bug();
    }
    return 0;
}
