"""threestudio-ddpo3d: reward alignment for score-distillation text-to-3D."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements():
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


setup(
    name="threestudio-ddpo3d",
    version="0.1.0",
    description="Reward alignment (DDPO3D, reward backprop, ...) for SDS text-to-3D, as a threestudio extension",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["ddpo3d", "ddpo3d.*"]),
    include_package_data=True,
    install_requires=_requirements(),
    extras_require={
        # CUDA rasterizer for Gaussian splats (pure Python install; its kernels JIT-compile on CUDA)
        "gsplat": ["gsplat>=1.5.3"],
        # exact versions (ruff's formatting changes between releases) are in constraints.txt
        # selenium drives headless Chromium in the comparison report's browser test (skipped without a browser)
        "dev": ["pytest", "pytest-xdist", "ruff", "scikit-image", "selenium"],
        # marching cubes for --export on the built-in runtime (threestudio exports with its own code)
        "export": ["scikit-image"],
    },
    entry_points={
        "console_scripts": ["ddpo3d-eval=ddpo3d.eval.__main__:main"],
    },
)
