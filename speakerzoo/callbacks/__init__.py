"""Lightning callbacks of speakerzoo (stage switches, freezing, TensorBoard figures).

The spine uses Lightning's own callbacks (ModelCheckpoint, LearningRateMonitor,
EarlyStopping), configured in :mod:`speakerzoo.cli` and ``configs/trainer/``; zoo models
add their own callbacks here.
"""
