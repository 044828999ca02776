// Stands in for flatbuffers/flatbuffers.h as shipped in esp-tflite-micro's third_party/flatbuffers, for a
// syntax check without ESP-IDF. Only the pieces firmware/main/inference.cc touches.
#pragma once

#include <cstddef>
#include <cstdint>

namespace flatbuffers {

typedef uint32_t uoffset_t;

template <typename T>
struct Offset {
    uoffset_t o;
};

template <typename T>
class Vector {
 public:
    uoffset_t size() const;
    T Get(uoffset_t i) const;
};

// A vector of tables hands out pointers to them.
template <typename T>
class Vector<Offset<T>> {
 public:
    uoffset_t size() const;
    const T *Get(uoffset_t i) const;
};

class String {
 public:
    const char *c_str() const;
};

class Verifier {
 public:
    Verifier(const uint8_t *const buf, const size_t buf_len, const uoffset_t max_depth = 64,
             const uoffset_t max_tables = 1000000, const bool check_alignment = true);
};

}  // namespace flatbuffers
