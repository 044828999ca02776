/* Stands in for ESP-IDF's components/esp_timer/include/esp_timer.h, for a syntax check without ESP-IDF. */
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Microseconds since boot. */
int64_t esp_timer_get_time(void);

#ifdef __cplusplus
}
#endif
