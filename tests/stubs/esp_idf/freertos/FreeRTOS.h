/* Stands in for ESP-IDF's FreeRTOS headers (components/freertos/.../FreeRTOS.h and portmacro.h), for a
 * syntax check without ESP-IDF. */
#pragma once

#include <stdint.h>

#include "sdkconfig.h"

typedef uint32_t TickType_t;
typedef int BaseType_t;
typedef unsigned int UBaseType_t;

#define pdPASS 1
#define pdFAIL 0
#define portMAX_DELAY ((TickType_t)0xffffffffUL)
#define pdMS_TO_TICKS(xTimeInMs) ((TickType_t)(((TickType_t)(xTimeInMs) * (TickType_t)CONFIG_FREERTOS_HZ) / (TickType_t)1000U))
#define tskNO_AFFINITY ((BaseType_t)0x7FFFFFFF)

#if CONFIG_FREERTOS_UNICORE
#define portNUM_PROCESSORS 1
#else
#define portNUM_PROCESSORS 2
#endif
