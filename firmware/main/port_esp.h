/*
 * ESP-IDF side of hil_port_t: the link (UART or USB-Serial-JTAG), the flash model store, the TFLM
 * interpreter, esp_timer and esp_restart, gathered into the one struct the portable core calls.
 */
#ifndef HIL_PORT_ESP_H
#define HIL_PORT_ESP_H

#include <stdint.h>

#include "hil_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Find the model partition, reserve the arena, fill the device facts. Never NULL; a part that failed
 * reports capacity or arena 0 in HELLO and refuses the requests that need it. */
const hil_port_t *port_esp_init(void);
/* Install the link driver. 0 on success. */
int port_esp_link_open(void);
/* Block until at least one byte arrives; returns the count (or <0 on a driver error). */
int port_esp_link_read(uint8_t *buf, uint32_t cap);
/* Send all bytes; 0 on success. */
int port_esp_link_write(const uint8_t *data, uint32_t len);

#ifdef __cplusplus
}
#endif

#endif
