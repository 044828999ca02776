/* Stands in for ESP-IDF's components/esp_hw_support/include/esp_cpu.h, for a syntax check without
 * ESP-IDF. The real function is an always-inline read of CCOUNT (Xtensa) or mcycle (RISC-V). */
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef uint32_t esp_cpu_cycle_count_t;

esp_cpu_cycle_count_t esp_cpu_get_cycle_count(void);

#ifdef __cplusplus
}
#endif
