"""The bundled S&P 500 files are read without importing skfolio (3-6 s of imports per run);
the frames must equal what skfolio's own loaders return, to the bit."""
import pandas as pd


def test_bundled_csv_equals_skfolio_loaders():
    from skfolio.datasets import load_sp500_dataset, load_sp500_index

    from tournament.data import skfolio_bundled_csv
    pd.testing.assert_frame_equal(skfolio_bundled_csv("sp500_dataset.csv.gz"),
                                  load_sp500_dataset(), check_exact=True)
    pd.testing.assert_frame_equal(skfolio_bundled_csv("sp500_index.csv.gz"),
                                  load_sp500_index(), check_exact=True)


def test_loading_sp500_does_not_import_skfolio():
    import subprocess
    import sys
    code = ("import sys\nfrom tournament.data import load_dataset\nload_dataset('sp500')\n"
            "print('skfolio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
