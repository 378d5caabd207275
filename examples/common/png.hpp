#pragma once
/// \file
/// Example-side PNG writing: a thin wrapper over stb_image_write (Sean Barrett, public
/// domain / MIT; Debian package libstb-dev, header <stb/stb_image_write.h>), and a diverging
/// colour map for heat maps of cosine similarities. Not part of the library.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <vector>

// stb's implementation is compiled into this translation unit with internal linkage, so
// several examples may include this header.
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

namespace examples {

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
struct rgb_image {
    int width = 0, height = 0;
    std::vector<std::uint8_t> rgb;
    rgb_image(int w, int h) : width(w), height(h), rgb(std::size_t(w) * std::size_t(h) * 3, 0) {}
    void set(int x, int y, const std::uint8_t (&c)[3]) {
        std::uint8_t* p = rgb.data() + (std::size_t(y) * std::size_t(width) + std::size_t(x)) * 3;
        p[0] = c[0];
        p[1] = c[1];
        p[2] = c[2];
    }
};

/// Writes `img` as a PNG; throws std::runtime_error naming the path on failure.
inline void write_png(const std::filesystem::path& path, const rgb_image& img) {
    if (stbi_write_png(path.string().c_str(), img.width, img.height, 3, img.rgb.data(),
                       img.width * 3) == 0)
        throw std::runtime_error("cannot write " + path.string());
}

/// Colour of v in [-1, 1] on a blue - white - red diverging map (v clamped; -1 blue,
/// 0 white, +1 red), e.g. for cosine similarities.
inline void diverging_colour(double v, std::uint8_t (&c)[3]) {
    const double t = std::clamp(v, -1.0, 1.0);
    const double a = std::abs(t);  // distance from white
    const auto byte = [](double x) { return std::uint8_t(std::lround(255.0 * x)); };
    if (t >= 0) {  // white -> (178, 24, 43)
        c[0] = byte(1.0 - a * (1.0 - 178.0 / 255.0));
        c[1] = byte(1.0 - a * (1.0 - 24.0 / 255.0));
        c[2] = byte(1.0 - a * (1.0 - 43.0 / 255.0));
    } else {  // white -> (33, 102, 172)
        c[0] = byte(1.0 - a * (1.0 - 33.0 / 255.0));
        c[1] = byte(1.0 - a * (1.0 - 102.0 / 255.0));
        c[2] = byte(1.0 - a * (1.0 - 172.0 / 255.0));
    }
}

/// A heat map of a rows x cols matrix (row-major `values`, expected in [-1, 1]), every entry
/// drawn as a cell_width x cell_height block, with a one-pixel dark line before every
/// `row_group`-th row and every `col_group`-th column (0: none), e.g. between classes.
inline rgb_image heat_map(const std::vector<float>& values, int rows, int cols, int cell_width,
                          int cell_height, int row_group, int col_group) {
    if (values.size() != std::size_t(rows) * std::size_t(cols) || cell_width < 1 || cell_height < 1)
        throw std::invalid_argument(
            "heat_map: values must hold rows * cols entries, cells >= 1 px");
    rgb_image img(cols * cell_width, rows * cell_height);
    const std::uint8_t line[3] = {40, 40, 40};
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            std::uint8_t colour[3];
            diverging_colour(double(values[std::size_t(r) * std::size_t(cols) + std::size_t(c)]),
                             colour);
            for (int y = 0; y < cell_height; ++y)
                for (int x = 0; x < cell_width; ++x) {
                    const bool edge = (row_group > 0 && y == 0 && r > 0 && r % row_group == 0) ||
                                      (col_group > 0 && x == 0 && c > 0 && c % col_group == 0);
                    img.set(c * cell_width + x, r * cell_height + y, edge ? line : colour);
                }
        }
    return img;
}

}  // namespace examples
