// Drains the BPF ring buffer on its own thread and hands JavaScript whole
// batches of records (one call per batch, never per event).
#pragma once
#include <napi.h>
#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

struct ring_buffer;

namespace amber {

struct Batch {
  std::vector<uint8_t> data;
  size_t used = 0;
};

class RingReader;

// Called on the JS thread with one batch.
void DeliverBatch(Napi::Env env, Napi::Function on_batch, RingReader* reader, Batch* batch);
using BatchTsfn = Napi::TypedThreadSafeFunction<RingReader, Batch, DeliverBatch>;

struct ReaderStats {
  uint64_t records = 0;
  uint64_t bytes = 0;
  uint64_t batches = 0;
  uint64_t stalls = 0;  // times the reader waited for JavaScript to free a batch
};

class RingReader {
 public:
  // Takes ownership of nothing: the ring map fd stays the skeleton's.
  RingReader(int ring_fd, size_t batch_bytes, size_t batch_count, int poll_ms);
  ~RingReader();

  // Creates the ring_buffer consumer; returns a negative errno on failure.
  int Open();
  // Starts the thread; batches go to tsfn, on the JS thread of loop.
  void Start(BatchTsfn tsfn, uv_loop_t* loop);
  // Stops the thread after a last drain. Idempotent.
  void Stop();
  ReaderStats Stats();
  // The JS thread gives a delivered batch back.
  void Recycle(Batch* batch);
  // JS thread: a batch JavaScript has been handed; given back once the event
  // loop turns (see recycle_check_).
  void Delivered(Batch* batch);

 private:
  static int OnSample(void* ctx, void* data, size_t size);
  static void OnLoopTurn(uv_check_t* check);
  int Append(const void* data, size_t size);
  bool AcquireBatch(bool wait);
  void Flush();
  void Run();

  int ring_fd_;
  size_t batch_bytes_;
  int poll_ms_;
  ring_buffer* ring_ = nullptr;
  BatchTsfn tsfn_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  bool started_ = false;

  std::mutex pool_mutex_;
  std::condition_variable pool_cv_;
  std::vector<std::unique_ptr<Batch>> all_;
  std::vector<Batch*> free_;
  Batch* current_ = nullptr;  // reader thread only

  // Batches JavaScript got since the event loop last turned (JS thread only).
  // They go back to the pool from a check handle, after the loop's poll phase:
  // recycled at once, a fast ring kept Node's thread-safe-function queue full
  // and JavaScript ran up to 1000 batches without a turn of the loop (timers,
  // signals and closed pipes waited seconds). So a turn takes at most the pool.
  std::vector<Batch*> delivered_;
  uv_check_t* recycle_check_ = nullptr;

  // Counted by the reader thread, published once per batch.
  uint64_t records_ = 0;
  uint64_t bytes_ = 0;
  std::atomic<uint64_t> pub_records_{0};
  std::atomic<uint64_t> pub_bytes_{0};
  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> stalls_{0};
};

}  // namespace amber
