#pragma once
// Console helpers the example programs share: printf-style formatting into a std::string and
// wall-clock seconds since a time point (progress lines, timing reports).

#include <chrono>
#include <cstdio>
#include <string>

namespace examples {

/// `std::snprintf(f, args...)` as a string (at most 1023 characters; longer text is cut).
inline std::string fmt(const char* f, auto... args) {
    char buf[1024];
    std::snprintf(buf, sizeof buf, f, args...);
    return buf;
}

/// Seconds of wall-clock time since `t0`.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace examples
