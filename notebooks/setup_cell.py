# Setup: installs gi_utils where it is missing and says what this session runs on. The steps are in gi_setup.py,
# which sits in this checkout, in the bundle dataset attached on Kaggle, or with the wheels on Google Drive (Colab).
import glob, os, runpy  # noqa: E401, I001
if os.environ.get("COLAB_RELEASE_TAG"):  # Colab: mount Google Drive first
    from google.colab import drive
    drive.mount(os.path.abspath("drive"))
places = ["gi_setup.py", "*/gi_setup.py", "../input/*/gi_setup.py", "../input/*/*/gi_setup.py",  # a checkout, Kaggle
          "drive/MyDrive/gi-tract-segmentation/wheels/gi_setup.py"]  # Colab
found = [path for place in places for path in sorted(glob.glob(place))]
setup = runpy.run_path(found[0] if found else "gi_setup.py")  # none: attach the bundle (Kaggle), copy it to Drive (Colab)
