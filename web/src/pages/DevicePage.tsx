export default function DevicePage() {
  return <p>DevicePage</p>;
}
