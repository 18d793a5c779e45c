"""The one thing pyproject.toml cannot declare: steplog's optional C extensions
(steplog/_otlp_speedups.c, the span export process's OTLP encoding; steplog/_span_speedups.c,
the life of a span in the processes that make them). ``optional``: where they do not build
(no C compiler), the install goes on and steplog.otlp and steplog.tracing do the same in
Python."""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(
            "steplog._otlp_speedups",
            ["steplog/_otlp_speedups.c"],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension(
            "steplog._span_speedups",
            ["steplog/_span_speedups.c"],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
    ]
)
