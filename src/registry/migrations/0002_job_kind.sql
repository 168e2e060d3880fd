-- What a job runs: a training run ('train'), or an evaluation the server runs ('eval', its
-- eval file under the job's folder). Rows made before this column are training runs.

ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'train' CHECK (kind IN ('train', 'eval'));
