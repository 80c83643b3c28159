"""Shared names: record feature keys, batch keys, frame layout, export signatures.

Every module that reads or writes a snippet, a batch or a SavedModel uses these
constants, so the schema is defined once (`data/records.py` writes and reads it).
"""

# --- Snippet layout -----------------------------------------------------------
# A snippet is three consecutive frames in temporal order [t-1, t, t+1].
NUM_FRAMES = 3
TARGET_INDEX = 1
SOURCE_INDICES = (0, 2)  # t-1, t+1
NUM_SOURCES = len(SOURCE_INDICES)

# --- TFRecord features (tf.train.Example) -------------------------------------
FEATURE_IMAGES = "images"            # bytes_list[3]: encoded PNG/JPEG, temporal order
FEATURE_INTRINSICS = "intrinsics"    # float_list[9]: K (row-major) at the stored size
FEATURE_HEIGHT = "height"            # int64: stored image height
FEATURE_WIDTH = "width"              # int64: stored image width
FEATURE_SEQUENCE_ID = "sequence_id"  # bytes: e.g. "2011_09_26_drive_0001_sync/image_02"
FEATURE_FRAME_ID = "frame_id"        # int64: index of the target frame in its sequence
# Optional ground truth (synthetic world; absent for real datasets):
FEATURE_GT_DEPTH = "gt/depth"        # bytes: raw float32 [H, W] target depth (m), z-depth
FEATURE_GT_POSE = "gt/pose"          # float_list[NUM_SOURCES*16]: T_target->source, 4x4 row-major
FEATURE_GT_FLOW = "gt/flow"          # bytes: raw float32 [NUM_SOURCES, H, W, 2] flow target->source (px, x then y)
FEATURE_GT_MOVING = "gt/moving_mask" # bytes: raw uint8 [NUM_SOURCES, H, W], 1 = target pixel on a moving object
FEATURE_GT_OBJECT_MOTION = "gt/object_motion"  # bytes: raw float32 [NUM_SOURCES, H, W, 3]: residual
                                     # object motion r (m, target camera frame) per target pixel,
                                     # X_s = R (X_t + r) + t with (R, t) = gt/pose; 0 on static pixels
# Optional 2-D object boxes (any dataset; data/boxes.py). Variable length per frame:
#   boxes/count  int64_list[NUM_FRAMES]: number of boxes of each frame, temporal order
#   boxes/values float_list[BOX_FIELDS * sum(count)]: the boxes of frame 0, then frame 1, then
#                frame 2, each row (x1, y1, x2, y2, score, class) with x, y in pixels of the
#                STORED image (pixel centres at integer coordinates), x2 >= x1, y2 >= y1,
#                score in [0, 1] (1 for ground-truth labels), class = id of data/boxes.CLASSES.
# Records without these two features are valid: they carry no boxes.
FEATURE_BOX_COUNT = "boxes/count"
FEATURE_BOX_VALUES = "boxes/values"
BOX_FIELDS = 6  # x1, y1, x2, y2, score, class

# --- Keys of a parsed snippet / a training batch (dict of tensors) ------------
KEY_FRAMES = "frames"            # float32 [B, 3, H, W, 3] in [0, 1], clean (the losses see these)
KEY_FRAMES_AUG = "frames_aug"    # float32 [B, 3, H, W, 3] colour-jittered (the networks see these)
KEY_INTRINSICS = "intrinsics"    # float32 [B, 3, 3] at the batch's resolution
KEY_SEQUENCE_ID = "sequence_id"  # string [B]
KEY_FRAME_ID = "frame_id"        # int64 [B]
KEY_GT_DEPTH = "gt_depth"        # float32 [B, H, W, 1]
KEY_GT_POSE = "gt_pose"          # float32 [B, NUM_SOURCES, 4, 4] T_target->source
KEY_GT_FLOW = "gt_flow"          # float32 [B, NUM_SOURCES, H, W, 2]
KEY_GT_MOVING = "gt_moving_mask" # float32 [B, NUM_SOURCES, H, W, 1] in {0, 1}
KEY_GT_OBJECT_MOTION = "gt_object_motion"  # float32 [B, NUM_SOURCES, H, W, 3] residual object motion r
                                           # (m, target camera), X_s = R (X_t + r) + t; 0 on static pixels
# Boxes: present only when make_dataset(max_boxes=N) with N > 0; N rows per frame, padded.
KEY_BOXES = "boxes"              # float32 [B, NUM_FRAMES, N, 4] (x1, y1, x2, y2) px of the batch image; padding 0
KEY_BOX_MASK = "box_mask"        # float32 [B, NUM_FRAMES, N]: 1 = a real box, 0 = padding
KEY_BOX_SCORES = "box_scores"    # float32 [B, NUM_FRAMES, N] detector score (1 for labels); padding 0
KEY_BOX_CLASSES = "box_classes"  # int32 [B, NUM_FRAMES, N] id of data/boxes.CLASSES; padding -1

# --- Depth range (Monodepth2) -------------------------------------------------
MIN_DEPTH = 0.1
MAX_DEPTH = 100.0

# --- SavedModel export (TF Serving) -------------------------------------------
# <export_dir>/<name>/<version>/ ; every model has a `serving_default` signature.
EXPORT_DEPTH = "depth"   # inputs: image float32 [B, H, W, 3] in [0, 1]
                         # outputs: depth [B, H, W, 1] (m, up to scale), disparity [B, H, W, 1]
EXPORT_POSE = "pose"     # inputs: image_a, image_b float32 [B, H, W, 3] (temporal order a -> b)
                         # outputs: pose_vector [B, 6] (axis-angle rot, trans), transform [B, 4, 4] T_a->b
EXPORT_FLOW = "flow"     # inputs: image_a, image_b float32 [B, H, W, 3]
                         # outputs: flow [B, H, W, 2] pixels, a -> b, channel 0 = x
EXPORT_MOTION = "motion"  # Competitive Collaboration runs only (CC Eqs. 14-15)
                          # inputs: image_prev, image, image_next [B, H, W, 3], intrinsics [B, 3, 3]
                          # outputs: m_minus, m_plus (soft, 1 = static), masknet, consensus,
                          #   joint (m*) [B, H, W, 1] in {0, 1}; composite_flow [B, H, W, 2] (u*)
EXPORT_OBJECT_MOTION = "object_motion"  # Lee et al. runs only (train_and_evaluate.method = 'lee')
                          # inputs: image_a, image_b [B, H, W, 3] (a = target, b = source),
                          #   intrinsics [B, 3, 3] (stage 1's forward projection needs K)
                          # outputs: pose_vector [B, 6], transform [B, 4, 4] T_a->b (ego-motion),
                          #   residual [B, H, W, 3] (m at the depth's scale, camera a):
                          #   X_b = R (X_a + r) + t
