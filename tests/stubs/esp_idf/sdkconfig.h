/* Stands in for ESP-IDF's generated sdkconfig.h when tests/test_firmware.py runs model_store.c on the host
 * over a fake flash partition. Only the option model_store.c reads: -DHIL_STUB_MODEL_IN_RAM selects the
 * RAM-copy build (CONFIG_HIL_MODEL_IN_RAM), the default is the flash-mapped one. */
#pragma once

#if defined(HIL_STUB_MODEL_IN_RAM)
#define CONFIG_HIL_MODEL_IN_RAM 1
#endif
