#pragma once
/// \file
/// Example-side parsing of command-line flag values: whole numbers, real numbers and
/// comma-separated lists of whole numbers, each failing with a `std::invalid_argument` that
/// names the flag and the text it got. Not part of the library.

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace examples {

namespace detail {
[[noreturn]] inline void bad_flag_value(const std::string& flag, const char* wanted,
                                        const std::string& text) {
    std::string m = flag;
    m += " needs ";
    m += wanted;
    m += ", got '";
    m += text;
    m += "'";
    throw std::invalid_argument(m);
}
}  // namespace detail

/// The value of `flag` as a whole number >= 0 (all of `text` must be digits).
inline std::uint64_t whole_number(const std::string& flag, const std::string& text) {
    std::size_t used = 0;
    std::uint64_t v = 0;
    try {
        if (!text.empty() && text[0] != '-' && text[0] != '+') v = std::stoull(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used == 0 || used != text.size()) detail::bad_flag_value(flag, "a whole number", text);
    return v;
}

/// The value of `flag` as a finite real number (all of `text` must be the number).
inline double real_number(const std::string& flag, const std::string& text) {
    std::size_t used = 0;
    double v = 0.0;
    try {
        v = std::stod(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used == 0 || used != text.size() || !std::isfinite(v))
        detail::bad_flag_value(flag, "a finite number", text);
    return v;
}

/// The value of `flag` as a non-empty comma-separated list of whole numbers ("10,20,50").
inline std::vector<std::uint64_t> whole_number_list(const std::string& flag,
                                                    const std::string& text) {
    std::vector<std::uint64_t> out;
    std::size_t at = 0;
    for (;;) {
        const std::size_t comma = text.find(',', at);
        const std::string item =
            text.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
        if (item.empty())
            detail::bad_flag_value(flag, "a comma-separated list of whole numbers", text);
        out.push_back(whole_number(flag, item));
        if (comma == std::string::npos) break;
        at = comma + 1;
    }
    return out;
}

}  // namespace examples
