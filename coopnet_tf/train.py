r"""Trains CoopNet: `python -m coopnet_tf.train --gin_file=gin/kitti.gin --model_dir=runs/kitti`.

The embedded default (no dataset needed; the synthetic world is generated on first use)::

    python -m coopnet_tf.train --gin_file=gin/synthetic.gin --model_dir=runs/synthetic

Flags are read here only: gin is parsed in `main` and one gin-configurable function,
`coopnet_tf.training.loop.train_and_evaluate(model_dir=...)`, does the rest. Every other
setting is a gin binding, e.g.::

    --gin_bindings="make_apportionment.name='glnet_min'" \
    --gin_bindings="train_and_evaluate.distribution='mirrored'"

The operative gin config is written to ``<model_dir>/operative_config.gin`` after the
first training step (gin.tf cannot be imported on TF 2.21, so the loop writes it itself).

The terminal shows the progress bar (one plain line per epoch and at most one a minute
when stderr is not a terminal), one ``[eval]`` line per validation and warnings;
``--verbosity=0`` adds absl's INFO log.
"""
import logging as std_logging
import os
import pathlib

from absl import app, flags, logging

flags.DEFINE_multi_string("gin_file", [], "gin config files (repeatable); relative paths "
                          "and `include` statements are also looked up in the repo's gin/.")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings (repeatable), e.g. "
                          "\"train_and_evaluate.num_epochs = 3\".")
flags.DEFINE_multi_string("gin_param", [], "alias of --gin_bindings (repeatable).")
flags.DEFINE_string("model_dir", None, "directory for checkpoints, TensorBoard summaries "
                    "and the operative config (default: the gin binding of "
                    "train_and_evaluate.model_dir, else runs/default).")
flags.DEFINE_bool("run_eagerly", False, "run the train step eagerly (slow; for debugging).")

FLAGS = flags.FLAGS

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"


def parse_gin(gin_files, gin_bindings) -> None:
    """Registers the project's configurables and parses ``gin_files`` + ``gin_bindings``.

    The repository's ``gin/`` directory is on the search path, so ``include 'base.gin'``
    and ``--gin_file=ablation/row3.gin`` resolve from anywhere.
    """
    import gin  # pylint: disable=import-outside-toplevel

    from coopnet_tf.training import factories  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    from coopnet_tf.training import loop  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

    if GIN_DIR.is_dir() and str(GIN_DIR) not in _gin_search_paths():
        gin.add_config_file_search_path(str(GIN_DIR))
    # gin probes each include relative to the working directory first and logs a
    # spurious "Path not found" error (Python logging) before trying the search path.
    root = std_logging.getLogger()
    level = root.level
    root.setLevel(std_logging.CRITICAL)
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings),
                                            finalize_config=False)
    finally:
        root.setLevel(level)


def _gin_search_paths():
    import gin.config  # pylint: disable=import-outside-toplevel
    return list(getattr(gin.config, "_LOCATION_PREFIXES", []))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not FLAGS["verbosity"].present:
        # Quiet by default: the progress bar, the [eval] lines and warnings;
        # --verbosity=0 brings back the INFO log (ours and TensorFlow's saver).
        logging.set_verbosity(logging.WARNING)
    parse_gin(FLAGS.gin_file, FLAGS.gin_bindings + FLAGS.gin_param)
    from coopnet_tf.training import loop  # pylint: disable=import-outside-toplevel

    kwargs = {"run_eagerly": True} if FLAGS.run_eagerly else {}
    if FLAGS.model_dir:
        kwargs["model_dir"] = FLAGS.model_dir
    logging.info("gin files: %s", FLAGS.gin_file)
    loop.train_and_evaluate(**kwargs)


if __name__ == "__main__":
    app.run(main)
