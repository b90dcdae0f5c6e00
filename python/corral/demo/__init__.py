"""``python -m corral demo``: an ML training job on scikit-learn's bundled
digits, stage by stage, each written as a user writes it with corral and
with the standard library (default arguments on both sides; the stdlib on
this platform's default start method, and on forkserver where the method
matters), measured in the same run.

1. ``small_items``: the features of every digit, one digit per item,
   through ``map`` (corral sizes its chunks; ``concurrent.futures`` sends
   items one by one); a logistic regression is fitted on them.
2. ``large_arrays``: 4 MB batches of upscaled digits to the workers and
   back (shared memory against pickles through a pipe).
3. ``loader``: training epochs fed by ``corral.DataLoader`` against
   torch's DataLoader (or a ``multiprocessing`` loader without torch).
4. ``fault``: stage 1 with a worker SIGKILLed midway.
5. ``startup``: a second pool of the program scores the model.

``run.run`` prints the table (``report``) and saves it with a chart. This
package imports nothing itself: a worker that unpickles a stage's function
imports that stage's module only.
"""
