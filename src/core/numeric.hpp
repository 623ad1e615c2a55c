// Host conversions between f32 and the 16-bit float formats (round to nearest even).
#pragma once

#include <tmoe/tmoe.h>

#include <cstdint>
#include <cstring>

namespace tmoe {

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float f16_to_f32(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
}

inline uint16_t f32_to_f16(float f) {
  _Float16 v = static_cast<_Float16>(f);
  uint16_t h;
  std::memcpy(&h, &v, 2);
  return h;
}

// Element i of a buffer of dtype (f32, f16 or bf16) as f32.
inline float load_as_f32(const void* data, tmoe_dtype dtype, int64_t i) {
  switch (dtype) {
    case TMOE_DTYPE_BF16:
      return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
    case TMOE_DTYPE_F16:
      return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
    default:
      return static_cast<const float*>(data)[i];
  }
}

inline void store_from_f32(void* data, tmoe_dtype dtype, int64_t i, float v) {
  switch (dtype) {
    case TMOE_DTYPE_BF16:
      static_cast<uint16_t*>(data)[i] = f32_to_bf16(v);
      break;
    case TMOE_DTYPE_F16:
      static_cast<uint16_t*>(data)[i] = f32_to_f16(v);
      break;
    default:
      static_cast<float*>(data)[i] = v;
  }
}

}  // namespace tmoe
