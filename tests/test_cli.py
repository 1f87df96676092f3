"""The command line is made from the config dataclasses: every field a flag with its default, and a flag a
subcommand does not use is an error naming it."""

import dataclasses

from aeflow import cli, pipeline
from aeflow.training import TrainConfig


def test_train_flags_are_trainconfigs_fields_with_its_defaults():
    args = cli.build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    assert TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}) == \
        TrainConfig(data="d", out="o")
    args = cli.build_parser().parse_args(["train", "--data", "d", "--out", "o", "--gpu", "--no-ray",
                                          "--lmbda", "0.01,0.05", "--epochs", "3"])
    assert (args.use_gpu, args.no_ray, args.lmbda, args.epochs) == (True, True, (0.01, 0.05), 3)


def test_job_flags_build_the_jobconfig():
    args = cli.build_parser().parse_args(["restore", "--input", "i", "--output", "o", "--overwrite",
                                          "--strength", "0.5", "--split-stages"])
    assert cli.job_config(args) == pipeline.JobConfig(input="i", output="o", resume=False, strength=0.5,
                                                      split_stages=True)
    args = cli.build_parser().parse_args(["generate", "--output", "o", "--count", "2", "--size", "320,200"])
    assert cli.job_config(args) == pipeline.JobConfig(input="", output="o", count=2, size=(320, 200))
    args = cli.build_parser().parse_args(["generate", "--output", "o", "--interpolate", "a.png", "s3://b/c.jpg"])
    assert cli.job_config(args) == pipeline.JobConfig(input="", output="o", interpolate=("a.png", "s3://b/c.jpg"))


def test_decompress_refuses_a_flag_it_does_not_use(tmp_path, capsys):
    code = cli.main(["decompress", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--listing", "k.txt"])
    assert code == 2
    assert "--listing does not apply to decompress (a flag of compress, restore, generate)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
