//! Which task goes to which worker, and what happens to a dead worker's
//! tasks. Pure bookkeeping, no I/O: the runtime applies its decisions.
//!
//! The books are the pool's one record of its tasks: `submit` numbers a
//! task and keeps its payload `P` (the runtime's: arguments and pickled
//! function) until the task leaves the books, which hand the payload back.
//!
//! Each worker has its own task queue and at most `depth` tasks sent to it
//! and not finished. `depth` follows the measured task time: short tasks
//! need several in a worker's queue so it never waits for the parent, long
//! ones only one, so that no task waits behind a long one while another
//! worker is idle.
//!
//! Among workers equally loaded, a task goes to the one that finished a
//! task last: it is the one most likely still awake (spinning on its queue,
//! its caches warm), while the others stay asleep. One task at a time then
//! keeps one worker busy however large the pool (round robin woke a
//! sleeping worker for every task: 55 k tasks/s with 2 workers fell to
//! 16 k/s with 64 on a 2-core machine); a burst still spreads over all of
//! them, as load comes first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

/// Nanoseconds of work to keep queued per worker.
const QUEUED_WORK_NS: f64 = 300_000.0;
/// Most tasks sent to one worker and not finished.
const MAX_DEPTH: usize = 512;
/// Most functions a worker caches; past it, it is told to forget them all.
pub const MAX_CACHED_FNS: usize = 256;
/// A task at the head of a worker's queue when that worker died without
/// running anything (it was reading or loading that task) is sent again at
/// most this many times in a row; then it is lost. Without a bound, a task
/// that kills every worker while it is loaded would be re-sent for ever.
pub const MAX_UNSTARTED_DEATHS: u32 = 3;

/// One task's bookkeeping.
#[derive(Debug)]
pub struct TaskBook<P> {
    /// Its function's id.
    pub fn_id: u64,
    /// Re-runs left after its worker dies.
    pub retries_left: u32,
    /// The worker it was sent to, if any.
    pub worker: Option<usize>,
    /// When it was submitted.
    pub submitted: Instant,
    /// Workers that died, in a row, while this task was the next one they
    /// would run (see `MAX_UNSTARTED_DEATHS`).
    pub unstarted_deaths: u32,
    /// What the caller keeps with the task (handed back when it leaves).
    pub payload: P,
}

/// A decision to send `task` to `worker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Send {
    /// The task.
    pub task: u64,
    /// The worker slot.
    pub worker: usize,
    /// True if the worker does not have the function yet.
    pub with_fn: bool,
    /// True if the worker must forget its cached functions first.
    pub reset_fns: bool,
}

/// What became of a dead worker's tasks.
#[derive(Debug, PartialEq, Eq)]
pub struct Down<P> {
    /// The task it was running, which will not be re-run.
    pub lost: Option<u64>,
    /// The task it was running, sent again (a retry).
    pub retried: Option<u64>,
    /// Tasks it had not started, back in the pending queue.
    pub requeued: Vec<u64>,
    /// The task it was about to run, lost after `MAX_UNSTARTED_DEATHS`
    /// workers died in a row before starting it.
    pub unstartable: Option<u64>,
    /// The payloads of `lost` and `unstartable`, which left the books.
    pub ended: Vec<(u64, P)>,
}

impl<P> Down<P> {
    fn nothing() -> Self {
        Down { lost: None, retried: None, requeued: Vec::new(), unstartable: None, ended: Vec::new() }
    }
}

#[derive(Debug, Default)]
struct WorkerBook {
    up: bool,
    sent: HashSet<u64>,
    fns: HashSet<u64>,
    reset_pending: bool,
    restarts: u32,
    /// When it last finished a task (`Dispatcher::finishes` then); 0:
    /// not since it started.
    last_done: u64,
}

/// The scheduler's books.
#[derive(Debug)]
pub struct Dispatcher<P> {
    workers: Vec<WorkerBook>,
    pending: VecDeque<u64>,
    tasks: HashMap<u64, TaskBook<P>>,
    /// Moving average of a task's run time per function, ns.
    avg_task_ns: HashMap<u64, f64>,
    next_worker: usize,
    /// Tasks finished so far: the clock of `WorkerBook::last_done`.
    finishes: u64,
    /// The id the next submitted task gets: ids grow with submission
    /// order, which `worker_down` relies on to resend the oldest first.
    next_task: u64,
}

impl<P> Dispatcher<P> {
    /// Books for `workers` worker slots, none up yet.
    pub fn new(workers: usize) -> Self {
        Dispatcher {
            workers: (0..workers).map(|_| WorkerBook::default()).collect(),
            pending: VecDeque::new(),
            tasks: HashMap::new(),
            avg_task_ns: HashMap::new(),
            next_worker: 0,
            finishes: 0,
            next_task: 1,
        }
    }

    /// Tasks sent to a worker and not finished, at most, while the next
    /// task runs function `fn_id`. A function not measured yet gets one
    /// task per worker: it may be long.
    pub fn depth(&self, fn_id: u64) -> usize {
        match self.avg_task_ns.get(&fn_id) {
            None => 1,
            Some(&avg) if avg > 10_000_000.0 => 1,
            Some(&avg) => (1.0 + QUEUED_WORK_NS / avg.max(1.0)).clamp(2.0, MAX_DEPTH as f64) as usize,
        }
    }

    /// Tasks submitted and not finished.
    pub fn outstanding(&self) -> usize {
        self.tasks.len()
    }

    /// Tasks waiting for a worker.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The books of `task`.
    pub fn task(&self, task: u64) -> Option<&TaskBook<P>> {
        self.tasks.get(&task)
    }

    /// Times slot `worker` was restarted.
    pub fn restarts(&self, worker: usize) -> u32 {
        self.workers.get(worker).map_or(0, |w| w.restarts)
    }

    /// Records a new task and returns its id (1, 2, 3...: never 0, which
    /// the result messages of a booting worker carry); it waits for `assign`.
    pub fn submit(&mut self, fn_id: u64, retries: u32, payload: P) -> u64 {
        let task = self.next_task;
        self.next_task += 1;
        self.tasks.insert(
            task,
            TaskBook {
                fn_id,
                retries_left: retries,
                worker: None,
                submitted: Instant::now(),
                unstarted_deaths: 0,
                payload,
            },
        );
        self.pending.push_back(task);
        task
    }

    /// Sends pending tasks to workers that are up and have room, the
    /// least loaded first.
    pub fn assign(&mut self, ready: impl Fn(usize) -> bool) -> Vec<Send> {
        let n = self.workers.len();
        let mut out = Vec::new();
        while let Some(&task) = self.pending.front() {
            let depth = self.tasks.get(&task).map_or(1, |b| self.depth(b.fn_id));
            // Least loaded worker that is up and ready; on ties the one
            // that finished a task last (see the module doc), then round
            // robin (workers that finished nothing yet).
            let mut best: Option<(usize, (usize, u64))> = None;
            for k in 0..n {
                let i = (self.next_worker + k) % n;
                let w = &self.workers[i];
                let rank = (w.sent.len(), u64::MAX - w.last_done);
                if w.up && w.sent.len() < depth && ready(i) && best.is_none_or(|(_, r)| rank < r) {
                    best = Some((i, rank));
                }
            }
            let Some((i, _)) = best else { break };
            self.pending.pop_front();
            self.next_worker = (i + 1) % n;
            let Some(book) = self.tasks.get_mut(&task) else { continue };
            book.worker = Some(i);
            let w = &mut self.workers[i];
            w.sent.insert(task);
            if !w.fns.contains(&book.fn_id) && w.fns.len() >= MAX_CACHED_FNS {
                w.fns.clear();
                w.reset_pending = true;
            }
            let with_fn = w.fns.insert(book.fn_id);
            let reset_fns = std::mem::take(&mut w.reset_pending);
            out.push(Send { task, worker: i, with_fn, reset_fns });
        }
        out
    }

    /// A send failed (the worker's queue was full): the task goes back to
    /// the front of the pending queue.
    pub fn unsend(&mut self, s: Send) {
        self.undo_send(s);
        if let Some(b) = self.tasks.get_mut(&s.task) {
            b.worker = None;
            self.pending.push_front(s.task);
        }
    }

    /// A send failed for good (the task can never enter that worker's
    /// queue): the task is dropped from the books, which it returns; the
    /// worker did not get the function or the reset the send carried.
    pub fn reject(&mut self, s: Send) -> Option<TaskBook<P>> {
        self.undo_send(s);
        self.tasks.remove(&s.task)
    }

    fn undo_send(&mut self, s: Send) {
        if let Some(w) = self.workers.get_mut(s.worker) {
            w.sent.remove(&s.task);
            w.reset_pending |= s.reset_fns;
            if s.with_fn {
                if let Some(b) = self.tasks.get(&s.task) {
                    w.fns.remove(&b.fn_id);
                }
            }
        }
    }

    /// The task finished (or was skipped as cancelled) after `busy_ns`;
    /// returns its books, None if unknown.
    pub fn finish(&mut self, task: u64, busy_ns: u64) -> Option<TaskBook<P>> {
        let book = self.tasks.remove(&task)?;
        if let Some(w) = book.worker.and_then(|i| self.workers.get_mut(i)) {
            w.sent.remove(&task);
            self.finishes += 1;
            w.last_done = self.finishes;
        }
        let x = busy_ns as f64;
        let avg = self.avg_task_ns.entry(book.fn_id).or_insert(x);
        *avg = 0.8 * *avg + 0.2 * x;
        if self.avg_task_ns.len() > 4096 {
            self.avg_task_ns.clear();
        }
        Some(book)
    }

    /// Removes a task that has not been sent (a cancel) and returns its
    /// payload; None if it was sent or is unknown.
    pub fn withdraw(&mut self, task: u64) -> Option<P> {
        match self.tasks.get(&task) {
            Some(b) if b.worker.is_none() => {
                self.pending.retain(|&t| t != task);
                self.tasks.remove(&task).map(|b| b.payload)
            }
            _ => None,
        }
    }

    /// Removes every task not yet sent; returns them, oldest first.
    pub fn withdraw_pending(&mut self) -> Vec<(u64, P)> {
        let ids: Vec<u64> = self.pending.drain(..).collect();
        ids.into_iter().filter_map(|t| self.tasks.remove(&t).map(|b| (t, b.payload))).collect()
    }

    /// Removes every task, sent or not (the pool broke); returns them,
    /// those not sent first.
    pub fn abandon_all(&mut self) -> Vec<(u64, P)> {
        let mut out = self.withdraw_pending();
        let mut sent: Vec<u64> = self.tasks.keys().copied().collect();
        sent.sort_unstable();
        out.extend(sent.into_iter().filter_map(|t| self.tasks.remove(&t).map(|b| (t, b.payload))));
        for w in &mut self.workers {
            w.sent.clear();
        }
        out
    }

    /// Slot `worker` has a (new) worker.
    pub fn worker_up(&mut self, worker: usize) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.up = true;
        }
    }

    /// Slot `worker`'s process has exited and its death is about to be
    /// booked (`worker_down`): nothing more is sent to it meanwhile (a task
    /// sent to a dead worker would be charged for its death).
    pub fn worker_exiting(&mut self, worker: usize) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.up = false;
        }
    }

    /// Slot `worker`'s process ended while running `running` (if any);
    /// `may_retry` is false when the task was killed on purpose. Its other
    /// tasks never started and go back to the front of the queue, in order.
    /// With `between_tasks` (it died running nothing, after it was ready),
    /// the oldest of them is the one it was reading: it is charged for the
    /// death, and lost after `MAX_UNSTARTED_DEATHS` in a row.
    pub fn worker_down(
        &mut self,
        worker: usize,
        running: Option<u64>,
        may_retry: bool,
        between_tasks: bool,
    ) -> Down<P> {
        let Some(w) = self.workers.get_mut(worker) else { return Down::nothing() };
        w.up = false;
        w.restarts += 1;
        w.last_done = 0;
        w.fns.clear();
        w.reset_pending = false;
        let sent: Vec<u64> = w.sent.drain().collect();
        let mut down = Down::nothing();
        let mut back: Vec<u64> = Vec::new();
        for t in sent {
            let Some(book) = self.tasks.get_mut(&t) else { continue };
            book.worker = None;
            if Some(t) == running {
                // It started: the deaths before were not in a row with any
                // that may follow.
                book.unstarted_deaths = 0;
                if may_retry && book.retries_left > 0 {
                    book.retries_left -= 1;
                    down.retried = Some(t);
                    back.push(t);
                } else {
                    if let Some(b) = self.tasks.remove(&t) {
                        down.ended.push((t, b.payload));
                    }
                    down.lost = Some(t);
                }
            } else {
                back.push(t);
            }
        }
        // Ids grow with submission order: resend the oldest first.
        back.sort_unstable();
        if between_tasks && running.is_none() {
            if let Some(&head) = back.first() {
                if let Some(book) = self.tasks.get_mut(&head) {
                    book.unstarted_deaths += 1;
                    if book.unstarted_deaths >= MAX_UNSTARTED_DEATHS {
                        if let Some(b) = self.tasks.remove(&head) {
                            down.ended.push((head, b.payload));
                        }
                        back.remove(0);
                        down.unstartable = Some(head);
                    }
                }
            }
        }
        for &t in back.iter().rev() {
            self.pending.push_front(t);
        }
        down.requeued = back.into_iter().filter(|&t| Some(t) != down.retried).collect();
        down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: usize) -> bool {
        true
    }

    /// Submits a task, checking the id it gets: ids follow submission order.
    fn submit(d: &mut Dispatcher<()>, expected: u64, fn_id: u64, retries: u32) {
        assert_eq!(d.submit(fn_id, retries, ()), expected);
    }

    #[test]
    fn a_start_breaks_the_row_of_unstarted_deaths() {
        let mut d = Dispatcher::<()>::new(1);
        submit(&mut d, 1, 9, 5);
        for _ in 0..MAX_UNSTARTED_DEATHS - 1 {
            d.worker_up(0);
            assert_eq!(d.assign(all).len(), 1);
            let down = d.worker_down(0, None, true, true);
            assert_eq!(down.unstartable, None);
        }
        // It starts on the next worker, which dies running it: a retry.
        d.worker_up(0);
        assert_eq!(d.assign(all).len(), 1);
        assert_eq!(d.worker_down(0, Some(1), true, false).retried, Some(1));
        // Two more deaths before it starts are not three in a row.
        for _ in 0..MAX_UNSTARTED_DEATHS - 1 {
            d.worker_up(0);
            assert_eq!(d.assign(all).len(), 1);
            assert_eq!(d.worker_down(0, None, true, true).unstartable, None);
        }
        d.worker_up(0);
        assert_eq!(d.assign(all).len(), 1);
        assert_eq!(d.worker_down(0, None, true, true).unstartable, Some(1), "the third in a row");
    }

    #[test]
    fn nothing_is_sent_to_a_worker_whose_exit_is_being_booked() {
        let mut d = Dispatcher::<()>::new(2);
        d.worker_up(0);
        d.worker_up(1);
        d.worker_exiting(0);
        submit(&mut d, 1, 9, 0);
        submit(&mut d, 2, 9, 0);
        let s = d.assign(all);
        assert!(s.iter().all(|s| s.worker == 1), "{s:?}");
    }

    #[test]
    fn sends_to_least_loaded_and_the_function_once() {
        let mut d = Dispatcher::<()>::new(2);
        d.worker_up(0);
        d.worker_up(1);
        for t in 1..=4 {
            submit(&mut d, t, 9, 0);
        }
        let s = d.assign(all);
        assert_eq!(s.len(), 2); // unmeasured function: one per worker
        assert_eq!(s.iter().filter(|s| s.with_fn).count(), 2);
        d.finish(s[0].task, 100_000); // measured: 0.1 ms, depth 4
        let s2 = d.assign(all);
        assert_eq!(s2.len(), 2);
        assert!(s2.iter().all(|x| !x.with_fn));
        submit(&mut d, 5, 9, 0);
        submit(&mut d, 6, 9, 0);
        submit(&mut d, 7, 9, 0);
        assert_eq!(d.assign(all).len(), 3); // both full at depth 4: 4 + 3 = 7 sent, 1 finished
    }

    #[test]
    fn depth_follows_task_time() {
        let mut d = Dispatcher::<()>::new(1);
        assert_eq!(d.depth(1), 1);
        submit(&mut d, 1, 1, 0);
        d.finish(1, 1_000);
        assert!(d.depth(1) > 100);
        assert_eq!(d.depth(2), 1, "another function is not measured yet");
        for t in 2..40 {
            submit(&mut d, t, 1, 0);
            d.finish(t, 50_000_000);
        }
        assert_eq!(d.depth(1), 1);
    }

    #[test]
    fn a_dead_worker_loses_only_its_running_task() {
        let mut d = Dispatcher::<()>::new(2);
        d.worker_up(0);
        submit(&mut d, 1, 1, 0);
        d.assign(all);
        d.finish(1, 1_000_000);
        for t in 2..=3 {
            submit(&mut d, t, 1, 0);
        }
        assert_eq!(d.assign(all).len(), 2);
        submit(&mut d, 4, 1, 0);
        let down = d.worker_down(0, Some(2), true, false);
        assert_eq!(
            down,
            Down { lost: Some(2), retried: None, requeued: vec![3], unstartable: None, ended: vec![(2, ())] }
        );
        assert_eq!(d.pending.iter().copied().collect::<Vec<_>>(), vec![3, 4]);
        d.worker_up(0);
        let s = d.assign(all);
        assert!(s[0].with_fn, "a new worker gets the function again");
        assert_eq!(d.restarts(0), 1);
    }

    #[test]
    fn retries_resend_the_running_task_until_spent() {
        let mut d = Dispatcher::<()>::new(1);
        d.worker_up(0);
        submit(&mut d, 1, 1, 1);
        d.assign(all);
        assert_eq!(d.worker_down(0, Some(1), true, false).retried, Some(1));
        d.worker_up(0);
        d.assign(all);
        assert_eq!(d.worker_down(0, Some(1), true, false).lost, Some(1));
        assert_eq!(d.outstanding(), 0);
    }

    #[test]
    fn a_task_that_kills_workers_before_it_starts_is_lost_after_three() {
        let mut d = Dispatcher::<()>::new(1);
        d.worker_up(0);
        submit(&mut d, 1, 1, 5);
        submit(&mut d, 2, 1, 0);
        for death in 1..=MAX_UNSTARTED_DEATHS {
            d.assign(all);
            let down = d.worker_down(0, None, true, true);
            d.worker_up(0);
            if death < MAX_UNSTARTED_DEATHS {
                assert_eq!(down.unstartable, None);
                assert_eq!(down.requeued, vec![1], "only the head was sent (depth 1)");
            } else {
                assert_eq!(down.unstartable, Some(1), "retries do not apply: it never started");
            }
        }
        // The task behind it is not charged and runs.
        let s = d.assign(all);
        assert_eq!(s.iter().map(|s| s.task).collect::<Vec<_>>(), vec![2]);
        // A death while running something charges the running task only.
        assert_eq!(d.worker_down(0, Some(2), true, true).lost, Some(2));
        assert_eq!(d.outstanding(), 0);
    }

    #[test]
    fn a_killed_task_is_not_retried_and_withdraw_only_takes_unsent() {
        let mut d = Dispatcher::<()>::new(1);
        d.worker_up(0);
        submit(&mut d, 1, 1, 5);
        submit(&mut d, 2, 1, 0);
        submit(&mut d, 3, 1, 0);
        d.assign(all);
        assert!(d.withdraw(1).is_none());
        assert!(d.withdraw(3).is_some());
        assert_eq!(d.worker_down(0, Some(1), false, false).lost, Some(1));
        assert_eq!(d.withdraw_pending(), vec![(2, ())]);
        assert_eq!(d.outstanding(), 0);
        assert_eq!(d.outstanding(), 0);
    }

    #[test]
    fn a_worker_told_to_forget_its_functions_past_the_cap() {
        let mut d = Dispatcher::<()>::new(1);
        d.worker_up(0);
        let mut resets = 0;
        for t in 1..=(MAX_CACHED_FNS as u64 + 1) {
            submit(&mut d, t, t, 0); // a new function each time
            for s in d.assign(all) {
                assert!(s.with_fn);
                resets += usize::from(s.reset_fns);
                d.finish(s.task, 1);
            }
        }
        assert_eq!(resets, 1);
        assert!(d.workers[0].fns.len() <= MAX_CACHED_FNS);
    }

    #[test]
    fn a_rejected_send_leaves_the_function_to_be_sent_with_the_next_task() {
        let mut d = Dispatcher::<()>::new(1);
        d.worker_up(0);
        submit(&mut d, 1, 9, 0);
        let s = d.assign(all);
        assert!(s[0].with_fn);
        assert_eq!(d.reject(s[0]).map(|b| b.fn_id), Some(9));
        assert_eq!(d.outstanding(), 0);
        submit(&mut d, 2, 9, 0);
        let s = d.assign(all);
        assert!(s[0].with_fn, "the worker never received function 9");
    }

    #[test]
    fn the_books_hand_each_payload_back_once() {
        let mut d = Dispatcher::<&str>::new(1);
        d.worker_up(0);
        let a = d.submit(1, 0, "a");
        let b = d.submit(1, 0, "b");
        let c = d.submit(1, 0, "c");
        assert_eq!(d.assign(all).len(), 1, "one task of an unmeasured function in the worker");
        assert_eq!(d.task(a).map(|t| t.payload), Some("a"));
        assert_eq!(d.withdraw(c), Some("c"));
        assert_eq!(d.abandon_all(), vec![(b, "b"), (a, "a")], "pending first, then the sent ones");
        assert_eq!(d.outstanding(), 0);
        assert_eq!(d.assign(all).len(), 0);
    }

    #[test]
    fn workers_not_ready_get_nothing() {
        let mut d = Dispatcher::<()>::new(2);
        d.worker_up(0);
        d.worker_up(1);
        submit(&mut d, 1, 1, 0);
        let s = d.assign(|i| i == 1);
        assert_eq!(s[0].worker, 1);
    }

    #[test]
    fn one_task_at_a_time_stays_on_the_worker_that_finished_last() {
        let mut d = Dispatcher::<()>::new(8);
        for i in 0..8 {
            d.worker_up(i);
        }
        let mut used = HashSet::new();
        for t in 1..=20 {
            submit(&mut d, t, 9, 0);
            let s = d.assign(all);
            assert_eq!(s.len(), 1);
            used.insert(s[0].worker);
            d.finish(t, 1_000);
        }
        assert_eq!(used.len(), 1, "round robin would wake every worker in turn: {used:?}");
        // A burst still goes to every worker, the least loaded first.
        for t in 21..=28 {
            submit(&mut d, t, 9, 0);
        }
        let s = d.assign(all);
        let spread: HashSet<usize> = s.iter().map(|s| s.worker).collect();
        assert_eq!(spread.len(), 8, "{s:?}");
    }

    #[test]
    fn a_restarted_worker_is_not_the_warm_one() {
        let mut d = Dispatcher::<()>::new(2);
        d.worker_up(0);
        d.worker_up(1);
        submit(&mut d, 1, 9, 0);
        submit(&mut d, 2, 9, 0);
        let s = d.assign(all);
        assert_eq!(s.len(), 2);
        // Both finished one; the second finished last, then is replaced.
        d.finish(s[0].task, 1_000);
        d.finish(s[1].task, 1_000);
        let last = s[1].worker;
        let _ = d.worker_down(last, None, true, false);
        d.worker_up(last);
        submit(&mut d, 3, 9, 0);
        assert_eq!(d.assign(all)[0].worker, s[0].worker);
    }
}
