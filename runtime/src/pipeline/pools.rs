//! The fixed pools and queues the stages pass frames and results through, all allocated when
//! the run starts.

use crate::frame::Frame;
use crate::postprocess::FrameResult;
use crate::queue::BoundedQueue;

/// Frames that may wait between capture and inference.
pub const FRAME_QUEUE: usize = 4;
/// Results that may wait for the sinks.
pub const RESULT_QUEUE: usize = 8;
/// Frames excluded from allocation counting while buffers settle.
pub const WARMUP_FRAMES: u64 = 10;

/// The fixed pools and queues the stages pass frames and results through.
pub struct Pools {
    /// Captured frames waiting for inference.
    pub frames: BoundedQueue<Box<Frame>, FRAME_QUEUE>,
    pub free_frames: BoundedQueue<Box<Frame>, { FRAME_QUEUE + 2 }>,
    /// Results waiting for the sinks.
    pub results: BoundedQueue<Box<FrameResult>, RESULT_QUEUE>,
    pub free_results: BoundedQueue<Box<FrameResult>, RESULT_QUEUE>,
}

impl Pools {
    /// Every frame and result the run will use, allocated now.
    pub(super) fn allocate(frame_bytes: usize, template: &FrameResult) -> Pools {
        let p = Pools {
            frames: BoundedQueue::new(),
            free_frames: BoundedQueue::new(),
            results: BoundedQueue::new(),
            free_results: BoundedQueue::new(),
        };
        for _ in 0..FRAME_QUEUE + 2 {
            let _ = p
                .free_frames
                .try_push(Box::new(Frame::with_capacity(frame_bytes)));
        }
        for _ in 0..RESULT_QUEUE {
            // A clone drops spare capacity: reserve the camera copy's buffer again.
            let mut r = Box::new(template.clone());
            r.camera.reserve(template.camera.data.capacity());
            let _ = p.free_results.try_push(r);
        }
        p
    }

    /// Stop the capture stage (no frame is taken or queued any more).
    pub(super) fn close_frames(&self) {
        self.frames.close();
        self.free_frames.close();
    }
}
