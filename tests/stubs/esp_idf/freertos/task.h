/* Stands in for ESP-IDF's components/freertos/.../task.h, for a syntax check without ESP-IDF. */
#pragma once

#include <stdint.h>

#include "freertos/FreeRTOS.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tskTaskControlBlock *TaskHandle_t;
typedef void (*TaskFunction_t)(void *);

/* ESP-IDF: stack depth in bytes. */
BaseType_t xTaskCreatePinnedToCore(TaskFunction_t pxTaskCode, const char *const pcName,
                                   const uint32_t ulStackDepth, void *const pvParameters, UBaseType_t uxPriority,
                                   TaskHandle_t *const pxCreatedTask, const BaseType_t xCoreID);
void vTaskDelay(const TickType_t xTicksToDelay);

#ifdef __cplusplus
}
#endif
