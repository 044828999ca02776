/*
 * The platform hooks of the portable core on an ESP32: bytes go over the benchmark link, the model lives
 * in the `model` flash partition, inference is TFLM with the ESP-NN kernels, wall time is esp_timer and a
 * RESET request restarts the chip once its acknowledgement has left the transmitter.
 */
#include "port_esp.h"

#include <cstring>

#include "sdkconfig.h"
#include "esp_err.h"
#include "esp_heap_caps.h"
#include "esp_system.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"

#if CONFIG_HIL_LINK_USB_SERIAL_JTAG
#include "driver/usb_serial_jtag.h"
#else
#include "driver/uart.h"
#endif

#include "inference.h"
#include "model_store.h"

#ifndef HIL_FW_VERSION
#error "HIL_FW_VERSION is defined by firmware/main/CMakeLists.txt"
#endif
#ifndef HIL_BUILD_HASH
#error "HIL_BUILD_HASH is defined by firmware/main/CMakeLists.txt"
#endif

namespace {

// A host that stopped reading must not hang the device forever in a write.
constexpr uint32_t kWriteTimeoutMs = 1000;
// Transmit buffer: one whole RESULT frame fits, so replying rarely waits for the wire.
constexpr int kTxBuffer = 8192;

hil_port_t s_port;

#if CONFIG_HIL_LINK_USB_SERIAL_JTAG

int link_open()
{
    usb_serial_jtag_driver_config_t config = {};
    config.tx_buffer_size = kTxBuffer;
    config.rx_buffer_size = CONFIG_HIL_LINK_RX_BUFFER;
    return usb_serial_jtag_driver_install(&config) == ESP_OK ? 0 : -1;
}

int link_read(uint8_t *buf, uint32_t cap)
{
    // Returns as soon as anything is buffered, up to cap.
    return usb_serial_jtag_read_bytes(buf, cap, portMAX_DELAY);
}

int link_write(const uint8_t *data, uint32_t len)
{
    while (len > 0) {
        const int n = usb_serial_jtag_write_bytes(data, len, pdMS_TO_TICKS(kWriteTimeoutMs));
        if (n <= 0) {
            return -1;
        }
        data += n;
        len -= static_cast<uint32_t>(n);
    }
    return 0;
}

void link_drain()
{
    // Long enough for the host to poll the last bulk-IN packet (USB full speed, 1 ms frames).
    vTaskDelay(pdMS_TO_TICKS(50));
}

#else  // UART

constexpr uart_port_t kUart = static_cast<uart_port_t>(CONFIG_HIL_LINK_UART_NUM);

int link_open()
{
    uart_config_t config = {};
    config.baud_rate = CONFIG_HIL_LINK_BAUD;
    config.data_bits = UART_DATA_8_BITS;
    config.parity = UART_PARITY_DISABLE;
    config.stop_bits = UART_STOP_BITS_1;
    config.flow_ctrl = UART_HW_FLOWCTRL_DISABLE;
    config.source_clk = UART_SCLK_DEFAULT;
    if (uart_driver_install(kUart, CONFIG_HIL_LINK_RX_BUFFER, kTxBuffer, 0, nullptr, 0) != ESP_OK) {
        return -1;
    }
    if (uart_param_config(kUart, &config) != ESP_OK) {
        return -1;
    }
    if (uart_set_pin(kUart, CONFIG_HIL_LINK_UART_TX_GPIO, CONFIG_HIL_LINK_UART_RX_GPIO, UART_PIN_NO_CHANGE,
                     UART_PIN_NO_CHANGE) != ESP_OK) {
        return -1;
    }
    return 0;
}

int link_read(uint8_t *buf, uint32_t cap)
{
    // uart_read_bytes waits for the whole length, so ask for one byte, then take whatever else is
    // already buffered: a frame is handed to the core as soon as it is complete.
    int n = uart_read_bytes(kUart, buf, 1, portMAX_DELAY);
    if (n <= 0) {
        return n;
    }
    size_t buffered = 0;
    if (cap > 1 && uart_get_buffered_data_len(kUart, &buffered) == ESP_OK && buffered > 0) {
        const uint32_t more = buffered < cap - 1 ? static_cast<uint32_t>(buffered) : cap - 1;
        const int m = uart_read_bytes(kUart, buf + 1, more, 0);
        if (m > 0) {
            n += m;
        }
    }
    return n;
}

int link_write(const uint8_t *data, uint32_t len)
{
    return uart_write_bytes(kUart, data, len) == static_cast<int>(len) ? 0 : -1;
}

void link_drain()
{
    (void)uart_wait_tx_done(kUart, pdMS_TO_TICKS(kWriteTimeoutMs));
}

#endif

// ---- hooks ----

int hook_write(void *, const uint8_t *data, uint32_t len)
{
    return link_write(data, len);
}

int hook_store_begin(void *, uint32_t size)
{
    // The interpreter reads the model in place (flash mapping or RAM copy), so it goes before the erase.
    inference_unload();
    return model_store_begin(size);
}

int hook_store_write(void *, uint32_t offset, const uint8_t *data, uint32_t len)
{
    return model_store_write(offset, data, len);
}

const uint8_t *hook_store_data(void *)
{
    return model_store_data();
}

int hook_store_commit(void *, uint32_t size, const uint8_t sha256[32])
{
    return model_store_commit(size, sha256);
}

int hook_store_committed(void *, uint32_t *size, uint8_t sha256[32])
{
    return model_store_committed(size, sha256);
}

int hook_model_load(void *, const uint8_t *model, uint32_t size, hil_model_info_t *info, char *msg, uint32_t cap)
{
    return inference_load(model, size, info, msg, cap);
}

int hook_invoke(void *, const uint8_t *input, uint32_t input_len, uint8_t *output, uint32_t output_len,
                uint64_t *cycles, char *msg, uint32_t cap)
{
    return inference_invoke(input, input_len, output, output_len, cycles, msg, cap);
}

int hook_dump(void *, const uint8_t *input, uint32_t input_len, hil_dump_sink_t sink, void *sink_ctx, char *msg,
              uint32_t cap)
{
    return inference_dump(input, input_len, sink, sink_ctx, msg, cap);
}

int hook_profile(void *, const uint8_t *input, uint32_t input_len, hil_op_sink_t sink, void *sink_ctx,
                 uint64_t *cycles, char *msg, uint32_t cap)
{
    return inference_profile(input, input_len, sink, sink_ctx, cycles, msg, cap);
}

// STATS runs on the bench task (the core is fed there), so the stack figure is that task's own.
int hook_health(void *, hil_health_t *out)
{
    out->source = HIL_HEALTH_DEVICE;
    // ESP-IDF's FreeRTOS counts stacks in bytes (StackType_t is uint8_t).
    out->stack_high_water = static_cast<uint32_t>(uxTaskGetStackHighWaterMark(nullptr));
    out->stack_size = CONFIG_HIL_TASK_STACK_SIZE;
    out->heap_internal_free = static_cast<uint32_t>(heap_caps_get_free_size(MALLOC_CAP_INTERNAL));
    out->heap_internal_min_free = static_cast<uint32_t>(heap_caps_get_minimum_free_size(MALLOC_CAP_INTERNAL));
#if CONFIG_SPIRAM
    out->psram_free = static_cast<uint32_t>(heap_caps_get_free_size(MALLOC_CAP_SPIRAM));
#else
    out->psram_free = 0;
#endif
    return 0;
}

uint64_t hook_clock_ns(void *)
{
    // esp_timer counts microseconds since boot.
    return static_cast<uint64_t>(esp_timer_get_time()) * 1000u;
}

void hook_reset(void *)
{
    link_drain();
    esp_restart();
}

}  // namespace

extern "C" const hil_port_t *port_esp_init(void)
{
    (void)model_store_init();
    (void)inference_init();

    std::memset(&s_port, 0, sizeof s_port);
    s_port.ctx = nullptr;
    s_port.info.fw_version = HIL_FW_VERSION;
    s_port.info.chip = CONFIG_IDF_TARGET;
    s_port.info.build_hash = HIL_BUILD_HASH;
    // The configured clock: ESP-IDF sets it at startup and power management is off in this app.
    s_port.info.cpu_mhz = CONFIG_ESP_DEFAULT_CPU_FREQ_MHZ;
    s_port.info.kernel_mode = inference_kernel_mode();
    s_port.info.timing_source = HIL_TIMING_DEVICE_CYCLES;
    s_port.info.arena_size = inference_arena_size();
    s_port.info.store_capacity = model_store_capacity();
    s_port.info.rx_buffer = CONFIG_HIL_LINK_RX_BUFFER;  // the UART driver's receive buffer (link_open)
    // Boot ROM, bootloader, app start and reloading (re-hashing) a committed model: about 1-2 s on an
    // ESP32 with a 2 MB store; the spec's bound for HELLO after RESET_ACK.
    s_port.info.reset_ms = 3000;

    s_port.write = hook_write;
    s_port.store_begin = hook_store_begin;
    s_port.store_write = hook_store_write;
    s_port.store_data = hook_store_data;
    s_port.store_commit = hook_store_commit;
    s_port.store_committed = hook_store_committed;
    s_port.model_load = hook_model_load;
    s_port.invoke = hook_invoke;
    s_port.clock_ns = hook_clock_ns;
    s_port.reset = hook_reset;
    s_port.dump = hook_dump;
    s_port.profile = hook_profile;
    s_port.health = hook_health;
    return &s_port;
}

extern "C" int port_esp_link_open(void)
{
    return link_open();
}

extern "C" int port_esp_link_read(uint8_t *buf, uint32_t cap)
{
    return link_read(buf, cap);
}

extern "C" int port_esp_link_write(const uint8_t *data, uint32_t len)
{
    return link_write(data, len);
}
