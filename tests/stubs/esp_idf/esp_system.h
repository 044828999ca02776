/* Stands in for ESP-IDF's components/esp_system/include/esp_system.h, for a syntax check without ESP-IDF. */
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

void esp_restart(void) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif
