#pragma once
/// \file
/// The single place where mmfuse includes xtensor headers.
///
/// xtensor 0.26 moved its headers into sub-folders (`xtensor/containers/xarray.hpp`,
/// `xtensor/io/xnpy.hpp`, `xtensor/views/xview.hpp`); 0.24/0.25 keep them flat
/// (`xtensor/xarray.hpp`). Both layouts are handled here with `__has_include`, so moving
/// between versions touches this file only. Every other mmfuse header or test that needs
/// xtensor includes this one.
///
/// xtensor lives under /usr/include (a system directory), so its own warnings are already
/// silenced under `-Wall -Wextra -Wpedantic -Werror`; no `#pragma GCC diagnostic` is needed
/// for 0.24.3 with g++ 12.

#if __has_include(<xtensor/containers/xarray.hpp>)  // xtensor >= 0.26
#include <xtensor/containers/xadapt.hpp>
#include <xtensor/containers/xarray.hpp>
#include <xtensor/containers/xfixed.hpp>
#include <xtensor/containers/xtensor.hpp>
#include <xtensor/core/xlayout.hpp>
#include <xtensor/core/xmath.hpp>
#include <xtensor/io/xnpy.hpp>
#include <xtensor/views/xstrided_view.hpp>
#include <xtensor/views/xview.hpp>
#elif __has_include(<xtensor/xarray.hpp>)  // xtensor 0.24 / 0.25
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xfixed.hpp>
#include <xtensor/xlayout.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xnpy.hpp>
#include <xtensor/xstrided_view.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>
#else
#error "mmfuse: xtensor headers not found (need xtensor 0.24 or later)"
#endif
