#include "ring_reader.h"

#include <bpf/libbpf.h>

#include <cerrno>
#include <cstring>

#include "events.h"

namespace amber {

RingReader::RingReader(int ring_fd, size_t batch_bytes, size_t batch_count, int poll_ms)
    : ring_fd_(ring_fd), batch_bytes_(batch_bytes), poll_ms_(poll_ms) {
  for (size_t i = 0; i < batch_count; i++) {
    auto batch = std::make_unique<Batch>();
    batch->data.resize(batch_bytes_);
    free_.push_back(batch.get());
    all_.push_back(std::move(batch));
  }
}

RingReader::~RingReader() {
  Stop();
  if (ring_) ring_buffer__free(ring_);
  if (recycle_check_) {
    // The handle outlives us until the loop closes it.
    recycle_check_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(recycle_check_),
             [](uv_handle_t* handle) { delete reinterpret_cast<uv_check_t*>(handle); });
  }
}

int RingReader::Open() {
  ring_ = ring_buffer__new(ring_fd_, OnSample, this, nullptr);
  if (!ring_) return -errno;
  return 0;
}

void RingReader::Start(BatchTsfn tsfn, uv_loop_t* loop) {
  tsfn_ = tsfn;
  recycle_check_ = new uv_check_t;
  uv_check_init(loop, recycle_check_);
  recycle_check_->data = this;
  uv_check_start(recycle_check_, OnLoopTurn);
  uv_unref(reinterpret_cast<uv_handle_t*>(recycle_check_));  // never what keeps Node alive
  started_ = true;
  thread_ = std::thread([this] { Run(); });
}

void RingReader::Stop() {
  if (!started_) return;
  started_ = false;
  // The last drain needs batches, and the loop cannot turn while we wait here.
  for (Batch* batch : delivered_) Recycle(batch);
  delivered_.clear();
  stopping_ = true;
  pool_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  tsfn_.Release();
}

ReaderStats RingReader::Stats() {
  ReaderStats stats;
  stats.records = pub_records_.load(std::memory_order_relaxed);
  stats.bytes = pub_bytes_.load(std::memory_order_relaxed);
  stats.batches = batches_.load(std::memory_order_relaxed);
  stats.stalls = stalls_.load(std::memory_order_relaxed);
  return stats;
}

void RingReader::Recycle(Batch* batch) {
  batch->used = 0;
  {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    free_.push_back(batch);
  }
  pool_cv_.notify_one();
}

void RingReader::Delivered(Batch* batch) { delivered_.push_back(batch); }

void RingReader::OnLoopTurn(uv_check_t* check) {
  auto* reader = static_cast<RingReader*>(check->data);
  if (!reader || reader->delivered_.empty()) return;
  for (Batch* batch : reader->delivered_) reader->Recycle(batch);
  reader->delivered_.clear();
}

bool RingReader::AcquireBatch(bool wait) {
  std::unique_lock<std::mutex> lock(pool_mutex_);
  if (wait) {
    pool_cv_.wait_for(lock, std::chrono::milliseconds(poll_ms_),
                      [this] { return !free_.empty() || stopping_; });
  }
  if (free_.empty()) return false;
  current_ = free_.back();
  free_.pop_back();
  return true;
}

// Hands the current batch to JavaScript, if it holds anything.
void RingReader::Flush() {
  if (!current_ || current_->used == 0) return;
  Batch* batch = current_;
  current_ = nullptr;
  pub_records_.store(records_, std::memory_order_relaxed);
  pub_bytes_.store(bytes_, std::memory_order_relaxed);
  batches_.fetch_add(1, std::memory_order_relaxed);
  if (tsfn_.NonBlockingCall(batch) != napi_ok) {
    // Only when the function is closing: nobody will read it.
    Recycle(batch);
  }
}

int RingReader::OnSample(void* ctx, void* data, size_t size) {
  return static_cast<RingReader*>(ctx)->Append(data, size);
}

// Copies one record; when the batch cannot take a largest record more, it is
// delivered and, if no batch is free, consumption pauses (the record is kept:
// libbpf has already consumed it).
int RingReader::Append(const void* data, size_t size) {
  if (size > AMBER_RECORD_MAX) size = AMBER_RECORD_MAX;
  std::memcpy(current_->data.data() + current_->used, data, size);
  current_->used += size;
  records_++;
  bytes_ += size;
  if (batch_bytes_ - current_->used < AMBER_RECORD_MAX) {
    Flush();
    if (!AcquireBatch(false)) {
      stalls_.fetch_add(1, std::memory_order_relaxed);
      return -EAGAIN;
    }
  }
  return 0;
}

void RingReader::Run() {
  while (!stopping_) {
    if (!current_ && !AcquireBatch(true)) continue;
    // Programs submit without waking us (see record_submit), so the poll
    // mostly times out: it is the timer. libbpf only consumes rings epoll
    // reported, hence the explicit consume.
    int n = ring_buffer__poll(ring_, poll_ms_);
    if (n != -EAGAIN && current_) n = ring_buffer__consume(ring_);
    if (n == -EAGAIN) continue;  // paused: wait for a free batch
    // Deliver what this round gathered even when the batch is not full:
    // latency stays at one poll interval.
    Flush();
  }
  // Last drain: whatever the programs wrote before they were detached.
  while (current_ || AcquireBatch(true)) {
    int n = ring_buffer__consume(ring_);
    Flush();
    if (n != -EAGAIN) break;
  }
}

void DeliverBatch(Napi::Env env, Napi::Function on_batch, RingReader* reader, Batch* batch) {
  if (env == nullptr) {
    reader->Recycle(batch);
    return;
  }
  Napi::Buffer<uint8_t> buffer = Napi::Buffer<uint8_t>::Copy(env, batch->data.data(), batch->used);
  reader->Delivered(batch);
  on_batch.Call({buffer});
}

}  // namespace amber
